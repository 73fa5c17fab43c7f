"""Test a finished run again: ``python -m aigc_lab.eval run_dir=<run dir> [ckpt_path=best|last|FILE] [overrides]``.

The run is rebuilt from its saved config, ``<run dir>/.hydra/config.yaml``, so the experiment and the
run's overrides need not be repeated (and a later change to ``conf/`` does not change the model).
Hydra composes it with the command's other overrides (``data.test_file=other.tsv trainer.precision=
bf16-mixed trainer.devices=1``; unknown keys are refused as in training), the datamodule and system are
instantiated by ``_target_``, the best checkpoint is loaded (``ckpt_path=last`` or a file otherwise, the rule of
checkpoints.py; ``ckpt=`` is an alias of ``ckpt_path=``, said so on stderr) and
``trainer.test`` runs. The test metrics are printed and saved, with the checkpoint and overrides used, as
``<run dir>/eval_<date>_<time>.json`` (or ``out=``). Nothing else in the run dir changes: no logger,
no checkpointing. Before the data is read, one test batch's memory is checked against this machine
(utils/memory.py); the test shows its progress (a bar in a terminal, else a line on stderr every
``progress_every_n_batches`` batches).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aigc_lab.errors import UserError, exit_with, user_message
from aigc_lab.utils.malloc import start_with_mimalloc
from aigc_lab.utils.paths import conf_dir
from aigc_lab.utils.signals import stops_on_signals
from aigc_lab.utils.stale_runs import mark_if_killed


@stops_on_signals("eval")  # SIGTERM and Ctrl+C in every stage (utils/signals.py)
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    _log_to_stderr()
    try:
        options, overrides = split_args(args)
        evaluate(options, overrides)
    except Exception as err:
        exit_with(_eval_message(err))


def split_args(args: list[str]) -> tuple[DictConfig, list[str]]:
    """(eval options: conf/eval.yaml with the command's values for its keys, overrides of the run's config)."""
    options = OmegaConf.load(Path(conf_dir()) / "eval.yaml")
    args = [_alias(a) for a in args]
    keys = set(options.keys())  # (`in` on a DictConfig is False for a missing value such as run_dir's)
    mine = [a for a in args if a.split("=", 1)[0] in keys]
    options = OmegaConf.merge(options, OmegaConf.from_dotlist(mine))
    if OmegaConf.is_missing(options, "run_dir"):
        raise UserError("give the run to evaluate: python -m aigc_lab.eval run_dir=outputs/<task>/runs/<time>")
    return options, [a for a in args if a not in mine]


def _alias(arg: str) -> str:
    """``ckpt=X`` -> ``ckpt_path=X``, the key every command takes (with a note)."""
    key, sep, value = arg.partition("=")
    if key != "ckpt" or not sep:
        return arg
    print(f"note: ckpt= is an alias of ckpt_path= (the key of training and generate): ckpt_path={value}",
          file=sys.stderr)
    return f"ckpt_path={value}"


def evaluate(options: DictConfig, overrides: list[str]) -> dict[str, float]:
    """Test the run's checkpoint; returns the test metrics (also written to the JSON file on rank zero)."""
    import lightning as L
    from hydra.utils import instantiate

    from aigc_lab.callbacks.progress import progress_bar
    from aigc_lab.checkpoints import check_checkpoint_for
    from aigc_lab.systems.spec import spec_of
    from aigc_lab.utils.config_check import check_targets
    from aigc_lab.utils.devices import check_trainer_hardware, instantiate_trainer
    from aigc_lab.utils.hardware import resolve_auto

    if options.progress_every_n_batches < 1:
        raise UserError(f"progress_every_n_batches must be >= 1, got {options.progress_every_n_batches}")
    run_dir = Path(options.run_dir).expanduser().resolve()
    mark_if_killed(run_dir)  # STATUS `running` of a process that is gone: `killed` (utils/stale_runs.py)
    cfg = load_run_config(run_dir, overrides)
    check_trainer_hardware(cfg.trainer)
    resolve_auto(cfg)
    check_targets(cfg)
    ckpt = pick_checkpoint(run_dir, str(options.ckpt_path))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    system = instantiate(cfg.model)
    system.check_sizes(datamodule, cfg.trainer, stage="test")  # one test batch against this machine
    spec = spec_of(system)
    if spec is not None:
        spec.run_prepare(cfg)  # prerequisite stages (the GAN's FID classifier)
    check_checkpoint_for(ckpt, system)
    progress = progress_bar(every_n_steps=options.progress_every_n_batches)
    trainer = instantiate_trainer(cfg.trainer, logger=False, callbacks=[progress], enable_checkpointing=False)
    # weights_only=False: our checkpoints hold config objects (partials, dataclasses) in their hparams
    results = trainer.test(system, datamodule=datamodule, ckpt_path=str(ckpt), weights_only=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        out = Path(options.out) if options.out else run_dir / f"eval_{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
        write_report(out, run_dir, ckpt, overrides, metrics)
    return metrics


def load_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The run's saved config composed with ``overrides`` by Hydra, its paths pointed at the run dir."""
    from hydra import compose, initialize_config_dir

    saved = run_dir / ".hydra"
    if not (saved / "config.yaml").is_file():
        raise UserError(f"no saved config in {saved}: is {run_dir} a run dir (outputs/<task>/runs/<time>)?")
    with initialize_config_dir(version_base="1.3", config_dir=str(saved), job_name="eval"):
        cfg = compose(config_name="config", overrides=overrides)
    # The saved config names these through Hydra's runtime (${hydra:...}), which only a Hydra job has.
    cfg.paths.output_dir = str(run_dir)
    cfg.paths.work_dir = os.getcwd()
    return cfg


def pick_checkpoint(run_dir: Path, ckpt: str) -> Path:
    """``best`` or ``last`` of the run dir (checkpoints.py), or a checkpoint file."""
    from aigc_lab.checkpoints import best_checkpoint, last_checkpoint, resolve_checkpoint

    if ckpt == "best":
        return best_checkpoint(run_dir)
    if ckpt == "last":
        return last_checkpoint(run_dir)
    return resolve_checkpoint(ckpt)


def write_report(out: Path, run_dir: Path, ckpt: Path, overrides: list[str], metrics: dict[str, float]) -> None:
    report: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": str(ckpt), "overrides": overrides,
                              "time": datetime.now().astimezone().isoformat(timespec="seconds"), "metrics": metrics}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def _log_to_stderr() -> None:
    """The ``aigc_lab`` logger's lines (progress in a batch job, data notes) on stderr: eval runs without Hydra's
    logging config, which gives them a handler in training."""
    logger = logging.getLogger("aigc_lab")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _eval_message(err: BaseException) -> str | None:
    from hydra.errors import HydraException, InstantiationException

    if isinstance(err, HydraException) and not isinstance(err, InstantiationException):
        return str(err).strip()  # an override the saved config refuses (unknown key, bad syntax)
    return user_message(err)


def cli() -> None:
    """The command, in a process that runs with mimalloc where it is installed (utils/malloc.py)."""
    start_with_mimalloc()  # first: it may restart this process, before torch is imported
    main()


if __name__ == "__main__":
    cli()
