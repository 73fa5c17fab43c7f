"""``prepare_data`` that does its work once per data module.

The launchers call ``prepare_data`` themselves, before anything is written, so that a missing file, a failed
download or a corpus that cannot be tokenized refuses the command; Lightning's ``fit`` and ``test`` then call it
again on the same object. Lightning has no switch for that second call, so the data modules mark theirs done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

Module = TypeVar("Module")


def prepare_once(prepare: Callable[[Module], None]) -> Callable[[Module], None]:
    """Wrap a data module's ``prepare_data``: the first call that returns marks it done, later calls return at once
    (a call that raised is tried again)."""

    @functools.wraps(prepare)
    def once(self: Module) -> None:
        if getattr(self, "_prepared", False):
            return
        prepare(self)
        self._prepared = True

    return once
