"""Errors a user can fix. The launcher prints their message without a traceback."""


class UserError(Exception):
    """A problem with the user's input, data or environment; the message says how to fix it."""


class DataNotFoundError(UserError):
    pass


class ConfigError(UserError, ValueError):
    """A config value out of its allowed range or of the wrong kind (also a ValueError, as before)."""


class CorpusError(UserError):
    """A text corpus that exists but cannot be trained on (empty, or shorter than one block)."""


class ResourceError(UserError):
    """A request larger than this machine's memory or disk can hold (utils/memory.py says by how much)."""
