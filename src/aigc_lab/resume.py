"""Resume a run in its own folder: ``python -m aigc_lab ckpt_path=last|<run dir>|<file.ckpt> [overrides]``.

Hydra picks the output dir before any of our code runs, so resuming is a rewrite of the command line
(``launch_argv``, called by the launcher before Hydra starts; ``prepare_argv`` is the rewrite alone):

- ``ckpt_path=last``: the newest run of this task (``outputs/<task_name>/runs/*``, by start time) that
  saved a checkpoint; ``ckpt_path=<run dir>``: that run; both resume from its ``checkpoints/last.ckpt``
  (else its newest checkpoint); ``ckpt_path=<file.ckpt>`` inside a run dir: that run, from that file. A
  checkpoint outside any run dir starts a new run from it.
- The rewritten command names the checkpoint file, adds ``hydra.run.dir=<that run dir>`` (same folder,
  same TensorBoard run, log and checkpoints) and the run's overrides from its latest launch (see below),
  except those whose key the command repeats: ``ckpt_path=last trainer.max_steps=4000`` resumes the run
  with its own experiment and settings and a longer budget. A command that sets ``hydra.run.dir`` itself
  (a DDP child process, or forking a run into another folder) gets only the checkpoint resolved.

The command line is parsed once here, with the parser ``@hydra.main`` uses (``_parse``), and composed only for
``ckpt_path=last``, to find the task's runs; the config is then composed once, by Hydra. A resume into an
existing run dir is checked whole inside the job before a byte is written there (``train.check_resume``: the
checks ``train`` makes anyway, made first; the run's log file gets their lines only once the command is
accepted): keys, types and ranges of every ``_target_`` node, devices and precision on this machine, the
datamodule, the checkpoint's kind and network against the system (its pickle only: the tensors are mapped, and
Lightning reads them once), callbacks, the trainer, the data's ``prepare_data``. A refused command prints one
line, exits with code 1 and leaves the folder byte-identical; a config that does not compose is Hydra's to
report, before it writes anything.

An accepted resume keeps the record of the launch that made the run: ``.hydra/`` and ``config_tree.log``
stay as the first launch wrote them (the command adds ``hydra.output_subdir=null``, so Hydra writes no
``.hydra/``). Launch ``n`` (1 for the first resume; the count of ``provenance.json``'s launches before it)
writes its own beside them: ``.hydra.<n>/`` (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``, as Hydra
writes them), ``config_tree.<n>.log`` and, for a dirty work tree, ``git_diff.<n>.patch``; ``provenance.json``
gets one entry per launch and ``STATUS`` follows the latest. A later resume repeats the overrides of the
newest ``.hydra.<n>/`` (else ``.hydra/``).

Lightning then restores weights, optimizers, schedulers and the loops (step, epoch); the ``RNGState``
callback restores the random number generators. Under ``--multirun`` only a checkpoint file is accepted
(every job starts from it, each in its own folder).
"""

from __future__ import annotations

from pathlib import Path

from hydra.errors import HydraException

from aigc_lab.errors import UserError
from aigc_lab.utils.overrides import quote

KEY = "ckpt_path"


def launch_argv(argv: list[str]) -> list[str]:
    """``prepare_argv``; a resume into an existing run dir gets ``hydra.output_subdir=null``, so that Hydra keeps
    the run's ``.hydra/``. A run dir left ``running`` by a process that is gone is marked ``killed`` first
    (``utils/stale_runs.py``)."""
    from aigc_lab.utils.stale_runs import mark_if_killed

    out, run_dir = _rewrite(argv)
    if run_dir is None:
        return out
    mark_if_killed(run_dir)  # STATUS `running` of a process that is gone: `killed`, before anything else
    if any(_key_of(arg) == "hydra.output_subdir" for arg in out[1:]):
        return out
    return [*out, "hydra.output_subdir=null"]


def prepare_argv(argv: list[str]) -> list[str]:
    """``argv`` (``sys.argv``) rewritten to resume into the checkpoint's run dir; unchanged without ``ckpt_path``."""
    return _rewrite(argv)[0]


def _rewrite(argv: list[str]) -> tuple[list[str], Path | None]:
    """(the rewritten argv, the existing run dir it resumes into, or None)."""
    parsed = _parse(argv[1:])
    if parsed is None:
        return argv, None  # not ours to judge: Hydra reports the malformed command line itself
    ns, overrides = parsed
    given = next((o for o in overrides if o.key_or_group == KEY and not o.is_delete()), None)
    value = None if given is None else given.value()
    if value is None or not isinstance(value, str):
        return argv, None
    if ns.multirun:
        if value == "last" or Path(value).is_dir():
            raise UserError(f"{KEY}={value} resumes one run: not with --multirun (give a .ckpt file to start "
                            f"every job from it)")
        return argv, None
    try:
        run_dir, ckpt = locate(value, [o.input_line for o in overrides if o is not given])
    except HydraException:
        return argv, None  # a config that does not compose: Hydra stops on it next, with its own message
    out = [f"{KEY}={quote(ckpt)}" if arg == given.input_line else arg for arg in argv]
    if run_dir is None or any(o.key_or_group == "hydra.run.dir" for o in overrides):
        return out, None  # a new run, or the folder is chosen already (e.g. a DDP child of a resumed run)
    repeated = {_key(o) for o in overrides}
    out += [o for o in original_overrides(run_dir) if _key_of(o) not in repeated]
    return [*out, f"hydra.run.dir={quote(run_dir)}"], run_dir


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

    from aigc_lab.utils.paths import conf_dir

    task_overrides = [o for o in overrides if _composes(_key_of(o))]
    with initialize_config_dir(version_base="1.3", config_dir=conf_dir(), job_name="resume"):
        cfg = compose(config_name="train", overrides=task_overrides)
    return str(cfg.task_name), str(cfg.paths.log_dir)


def original_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides of the run's latest launch: its newest ``.hydra.<n>/overrides.yaml``, else
    ``.hydra/overrides.yaml`` (the first launch's); and the first launch's ``hydra.searchpath`` (config folders
    outside ``conf/``, e.g. a system of one's own), without which its config would not compose again."""
    from omegaconf import OmegaConf

    found = [d / "overrides.yaml" for d in launch_configs(run_dir) if (d / "overrides.yaml").is_file()]
    task = [str(o) for o in OmegaConf.load(found[-1])] if found else []
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    hydra = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.overrides.hydra") if hydra_yaml.is_file() else None
    return task + [str(o) for o in hydra or [] if _key_of(str(o)) == "hydra.searchpath"]


def launch_configs(run_dir: Path) -> list[Path]:
    """The run's Hydra config folders by launch: ``.hydra`` (the first launch), then ``.hydra.<n>`` by n."""
    later = [p for p in run_dir.glob(".hydra.*") if p.suffix[1:].isdigit()]
    return [run_dir / ".hydra", *sorted(later, key=lambda p: int(p.suffix[1:]))]


def _parse(args: list[str]):
    """(Hydra's parsed arguments, parsed overrides) with Hydra's own parsers; None if either refuses."""
    from hydra._internal.utils import get_args_parser  # what @hydra.main parses the command line with
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = get_args_parser()
    parser.exit_on_error = False  # raise instead of printing usage: Hydra reports bad command lines itself
    try:
        ns, _ = parser.parse_known_args(args)
        return ns, OverridesParser.create().parse_overrides(ns.overrides)
    except Exception:
        return None


def _key(override) -> str:
    return override.get_key_element().lstrip("~+")


def _composes(key: str) -> bool:
    """Whether an override with this key changes the composed config (task keys, and Hydra's search path)."""
    return not key.startswith("hydra") or key == "hydra.searchpath"


def _key_of(line: str) -> str:
    return line.split("=", 1)[0].lstrip("~+")
