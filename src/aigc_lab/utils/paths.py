"""Output folders checked before anything is written to them: Hydra creates the run dir itself and, when
it cannot (its parent is a file, or not writable), stops with a traceback before any of our code runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aigc_lab.errors import UserError


def dir_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be created or written to, or None: its nearest existing ancestor (itself, when
    it exists) must be a writable directory."""
    folder = Path(folder).expanduser().absolute()
    for existing in (folder, *folder.parents):
        if existing.exists():
            if not existing.is_dir():
                return f"{existing} is a file, not a folder"
            if not os.access(existing, os.W_OK | os.X_OK):
                return f"{existing} is not writable"
            return None
    return None


def ensure_dir(folder: str | Path, what: str) -> Path:
    """Create ``folder``, or raise a UserError naming ``what`` it is for and why it cannot be."""
    problem = dir_problem(folder)
    if problem is not None:
        raise UserError(f"cannot write {what} to {folder}: {problem}. Fix: choose a writable folder")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class OutputDirCheck(Callback):
    """Hydra callback (conf/hydra/default.yaml): refuse a run or sweep dir that cannot be created, in one line.

    Hydra turns a callback's exceptions into warnings and goes on to fail on the folder with a traceback,
    so the refusal is an exit of its own (exit code 1)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config, "hydra.sweep.dir")


def _check(config: DictConfig, key: str) -> None:
    try:
        folder = OmegaConf.select(config, key)
    except Exception:  # an interpolation only a running job can resolve: Hydra judges the folder itself
        return
    problem = dir_problem(folder) if folder else None
    if problem is not None:
        print(f"\nerror: cannot create the output folder {folder} ({key}): {problem}. "
              f"Fix: set paths.log_dir (or {key}) to a writable folder", file=sys.stderr)
        sys.exit(1)


def conf_dir() -> str:
    """The repo's ``conf/`` in a source checkout, else the copy packaged inside the wheel."""
    package = Path(__file__).resolve().parents[1]  # src/aigc_lab
    for candidate in (package.parents[1] / "conf", package / "conf"):
        if (candidate / "train.yaml").exists():
            return str(candidate)
    raise FileNotFoundError(f"no conf/train.yaml next to {package}")
