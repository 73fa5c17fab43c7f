"""Log records held back from the run's log file while a launch into an existing run dir is checked.

Hydra opens the job's log file (``conf/hydra/default.yaml``: ``delay: true``, so not before its first record)
before the task function runs. A resume is checked whole inside the task, and a refused one must leave the run
dir byte-identical: while the checks run, the root logger's file handlers are replaced by one that keeps their
records in memory. The console sees every record at once either way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Held(logging.Handler):
    """Keeps the records it is given, for the file handlers it stands in for."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def file_logs_held() -> Iterator[None]:
    """While the block runs, the root logger's file handlers get nothing. A block that ends normally hands them
    its records, in order; one that raises drops the records and leaves the file handlers detached for the rest
    of the process (a refused launch writes nothing to the run's log, also on its way out)."""
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    held = _Held()
    for handler in files:
        root.removeHandler(handler)
    root.addHandler(held)
    try:
        yield
    finally:
        root.removeHandler(held)
    for handler in files:  # only reached when the block ended normally
        root.addHandler(handler)
        for record in held.records:
            if record.levelno >= handler.level:
                handler.handle(record)
