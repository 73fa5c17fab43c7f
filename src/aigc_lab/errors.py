"""Errors a user can fix. The launchers print their message without a traceback (``exit_with``)."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


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


def user_message(err: BaseException) -> str | None:
    """The one-line message for errors a user can fix, or None for real bugs (full traceback)."""
    from hydra.errors import InstantiationException

    cause, inner = err, None
    while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
        inner, cause = cause, cause.__cause__
    if isinstance(cause, UserError):
        return str(cause)
    if inner is not None:
        return instantiation_message(inner, cause)
    if isinstance(err, InstantiationException):
        return str(err).strip()
    if isinstance(err, (ValueError, FileNotFoundError, PermissionError)):
        return f"{type(err).__name__}: {err}"
    return None


def instantiation_message(err: BaseException, cause: BaseException) -> str:
    """Hydra's three lines ("Error in call to target 'T':", "ValueError('...')", "full_key: model.net")
    as one: "model.net: <the error> (ValueError in T)"."""
    lines = str(err).strip().splitlines()
    key = lines[-1].removeprefix("full_key: ") if lines[-1].startswith("full_key: ") else None
    target = lines[0].removeprefix("Error in call to target ").rstrip(":").strip("'")
    if key is None or not lines[0].startswith("Error in call to target"):
        return str(err).strip()  # another shape of message: as Hydra wrote it
    return f"{key}: {cause} ({type(cause).__name__} in {target})"


def exit_with(message: str | None, note: str = "") -> NoReturn:
    """Inside an ``except`` block: print ``error: <message>`` (and ``note`` on the next line) and exit with code 1;
    re-raise the exception being handled when it is a bug (``message`` None) or HYDRA_FULL_ERROR=1 asks for the
    traceback."""
    if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise  # the exception the caller is handling, with its traceback
    print(f"\nerror: {message}" + (f"\n{note}" if note else ""), file=sys.stderr)
    sys.exit(1)
