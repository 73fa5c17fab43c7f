"""The one error the sweeper raises itself (its own module, so that the sweeper's helpers import it without
importing the sweeper: no import cycle)."""

from __future__ import annotations

from hydra.errors import CompactHydraException

from aigc_lab.errors import ConfigError


class SweepError(CompactHydraException, ConfigError):
    """A sweep that cannot start or go on (a bad search space, a storage that cannot be reached): Hydra prints its
    one-line message, no traceback."""
