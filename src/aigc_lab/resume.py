"""Resume a run in its own folder: ``python -m aigc_lab ckpt_path=last|<run dir>|<file.ckpt> [overrides]``.

Hydra picks the output dir before any of our code runs, so resuming is a rewrite of the command line
(``prepare_argv``, called by the entry points before Hydra starts):

- ``ckpt_path=last``: the newest run of this task (``outputs/<task_name>/runs/*``, by start time) that
  saved a checkpoint; ``ckpt_path=<run dir>``: that run; both resume from its ``checkpoints/last.ckpt``
  (else its newest checkpoint); ``ckpt_path=<file.ckpt>`` inside a run dir: that run, from that file. A
  checkpoint outside any run dir starts a new run from it.
- The rewritten command names the checkpoint file, adds ``hydra.run.dir=<that run dir>`` (same folder,
  same TensorBoard run, the same ``.hydra/``, log and checkpoints, with ``STATUS`` and
  ``provenance.json`` updated) and the run's original overrides from ``<run dir>/.hydra/overrides.yaml``,
  except those whose key the command repeats: ``ckpt_path=last trainer.max_steps=4000`` resumes the run
  with its own experiment and settings and a longer budget. A command that sets ``hydra.run.dir`` itself
  (a DDP child process, or forking a run into another folder) gets only the checkpoint resolved.

Lightning then restores weights, optimizers, schedulers and the loops (step, epoch); the ``RNGState``
callback restores the random number generators. Under ``--multirun`` only a checkpoint file is accepted
(every job starts from it, each in its own folder).
"""

from __future__ import annotations

import re
from pathlib import Path

from hydra.errors import HydraException

from aigc_lab.errors import UserError

KEY = "ckpt_path"
_PLAIN = re.compile(r"[\w./:@+%-]+")  # override values that need no quotes in Hydra's grammar


def prepare_argv(argv: list[str]) -> list[str]:
    """``argv`` (``sys.argv``) rewritten to resume into the checkpoint's run dir; unchanged without ``ckpt_path``."""
    parsed = _parse(argv[1:])
    if parsed is None:
        return argv  # not ours to judge: Hydra reports the malformed command line itself
    multirun, overrides = parsed
    given = next((o for o in overrides if o.key_or_group == KEY and not o.is_delete()), None)
    value = None if given is None else given.value()
    if value is None or not isinstance(value, str):
        return argv
    if multirun:
        if value == "last" or Path(value).is_dir():
            raise UserError(f"{KEY}={value} resumes one run: not with --multirun (give a .ckpt file to start "
                            f"every job from it)")
        return argv
    try:
        run_dir, ckpt = locate(value, [o.input_line for o in overrides if o is not given])
    except HydraException:
        return argv  # a config that does not compose: Hydra stops on it next, with its own message
    out = [f"{KEY}={quote(ckpt)}" if arg == given.input_line else arg for arg in argv]
    if run_dir is None or any(o.key_or_group == "hydra.run.dir" for o in overrides):
        return out  # a new run, or the folder is chosen already (e.g. a DDP child of a resumed run)
    repeated = {_key(o) for o in overrides}
    out += [o for o in original_overrides(run_dir) if _key_of(o) not in repeated]
    return [*out, f"hydra.run.dir={quote(run_dir)}"]


def locate(value: str, overrides: list[str]) -> tuple[Path | None, Path]:
    """(the run dir to continue or None, the checkpoint file) for a ``ckpt_path`` value."""
    from aigc_lab.checkpoints import last_checkpoint  # imports torch: only when resuming

    if value == "last":
        run_dir = newest_run(overrides)
        return run_dir, last_checkpoint(run_dir)
    path = Path(value).expanduser().resolve()
    if path.is_dir():
        return path, last_checkpoint(path)
    if not path.is_file():
        raise UserError(f"{KEY}={value}: no such file or run dir")
    run_dir = path.parent.parent
    in_run = path.parent.name == "checkpoints" and (run_dir / ".hydra" / "overrides.yaml").is_file()
    return (run_dir if in_run else None), path


def newest_run(overrides: list[str]) -> Path:
    """The newest run dir of the task these overrides select that holds a checkpoint."""
    task_name, log_dir = _task_and_log_dir(overrides)
    root = Path(log_dir) / task_name / "runs"
    # Run dirs are named by start time (conf/hydra/default.yaml), so the name orders them.
    for run_dir in sorted(root.glob("*"), reverse=True):
        if any((run_dir / "checkpoints").glob("*.ckpt")):
            return run_dir.resolve()
    raise UserError(f"{KEY}=last: no run of task {task_name!r} with a checkpoint under {root}")


def _task_and_log_dir(overrides: list[str]) -> tuple[str, str]:
    """task_name and paths.log_dir as this command would compose them (the experiment sets the task)."""
    from hydra import compose, initialize_config_dir

    from aigc_lab.train import conf_dir

    task_overrides = [o for o in overrides if not _key_of(o).startswith("hydra")]
    with initialize_config_dir(version_base="1.3", config_dir=conf_dir(), job_name="resume"):
        cfg = compose(config_name="train", overrides=task_overrides)
    return str(cfg.task_name), str(cfg.paths.log_dir)


def original_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides the run was last launched with (``.hydra/overrides.yaml``)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def quote(value: str | Path) -> str:
    """A value as a Hydra override: as is when plain, else single-quoted (paths with spaces, commas...)."""
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _parse(args: list[str]):
    """(multirun?, parsed overrides) with Hydra's own argument and override parsers; None if either refuses."""
    from hydra._internal.utils import get_args_parser  # what @hydra.main parses the command line with
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = get_args_parser()
    parser.exit_on_error = False  # raise instead of printing usage: Hydra reports bad command lines itself
    try:
        ns, _ = parser.parse_known_args(args)
        return ns.multirun, OverridesParser.create().parse_overrides(ns.overrides)
    except Exception:
        return None


def _key(override) -> str:
    return override.get_key_element().lstrip("~+")


def _key_of(line: str) -> str:
    return line.split("=", 1)[0].lstrip("~+")
