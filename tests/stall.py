"""``python -m <module> args...`` with one function stalled, for the signal tests (tests/test_signals.py):

    python tests/stall.py <target> <how> <marker file> <module> [args...]

``target``: ``package.module:function`` or ``package.module:Class.method``, replaced where it is defined by a
wrapper that touches ``marker file`` (the test then knows the stage has begun) and stalls before calling it:

- ``python``: two minutes of short sleeps, as a slow stage made of many small operations (Python runs signal
  handlers between them);
- ``native``: one long torch operation (minutes; it releases the GIL), as a huge matmul, where no Python handler
  can run until it returns.
"""

from __future__ import annotations

import importlib
import runpy
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

STALL_S = 120.0


def python_stall() -> None:
    deadline = time.monotonic() + STALL_S
    while time.monotonic() < deadline:
        time.sleep(0.05)


def native_stall() -> None:
    import torch

    # log2(n) squarings and as many products of 3000 x 3000 matrices, inside one call: minutes on one core.
    torch.linalg.matrix_power(torch.zeros(3000, 3000), 2**62 - 1)


def stalled(original: Callable[..., Any], stall: Callable[[], None], marker: Path) -> Callable[..., Any]:
    @wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        marker.touch()
        stall()
        return original(*args, **kwargs)

    return wrapper


def patch(target: str, stall: Callable[[], None], marker: Path) -> None:
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    setattr(owner, name, stalled(getattr(owner, name), stall, marker))


def main() -> None:
    target, how, marker, module, *args = sys.argv[1:]
    patch(target, {"python": python_stall, "native": native_stall}[how], Path(marker))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
