"""The launcher: ``python -m aigc_lab [overrides]`` (or ``aigc-train``).

Composes ``conf/train.yaml``, checks and prints the config, instantiates everything by
``_target_``, fits, tests the best checkpoint and returns ``optimized_metric`` for sweeps.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from aigc_lab.errors import UserError, exit_with, user_message
from aigc_lab.utils.paths import conf_dir

log = logging.getLogger("aigc_lab")

# Noise that says nothing to a user of this project:
# - Lightning 2.6's pytree helper trips a torch 2.14 deprecation on every batch;
# - the frozen FID feature network is kept in eval mode on purpose, which Lightning reports at fit start.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


@dataclass
class Launch:
    """What a launch builds and checks before it writes anything (``prepare``)."""

    composed: str  # the config as Hydra composed it, ``auto`` unresolved: a resume's .hydra.<n>/config.yaml
    auto_choices: dict[str, Any]  # the values ``auto`` resolved to on this machine
    datamodule: Any
    system: Any
    trainer: Any


def prepare(cfg: DictConfig) -> Launch:
    """Every check ``train`` makes before it writes a byte, and the objects they build: this machine (devices,
    precision), keys, types and ranges of every ``_target_`` node, the datamodule and system (their pairing;
    sizes against the model and this machine's memory), the checkpoint against the system, the callbacks,
    loggers and trainer, and the data (``prepare_data``: files found, downloads, tokenizers cached). Raises what
    a refusal is; writes nothing under the run dir."""
    import lightning as L  # imported here so that `--help` and config errors come back fast
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from aigc_lab.checkpoints import check_checkpoint_for
    from aigc_lab.systems.spec import spec_of
    from aigc_lab.utils.config_check import check_targets
    from aigc_lab.utils.ddp import prepare_ddp_launch
    from aigc_lab.utils.devices import check_trainer_hardware, instantiate_trainer
    from aigc_lab.utils.hardware import resolve_auto
    from aigc_lab.utils.malloc import allocator

    logging.getLogger("lightning").handlers.clear()  # its own console handler would print each line twice
    composed = OmegaConf.to_yaml(cfg)
    check_trainer_hardware(cfg.trainer)
    auto_choices = resolve_auto(cfg)  # `auto` precision, channels_last, fused: the values fastest on this machine
    check_targets(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("malloc: %s (utils/malloc.py)", allocator())
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data)
    log.info("Instantiating system <%s>", cfg.model._target_)
    system = instantiate(cfg.model)
    check_pairing(system, datamodule)
    system.check_sizes(datamodule, cfg.trainer)  # against the model and this machine's memory
    if cfg.get("ckpt_path") and cfg.get("train", True):
        check_checkpoint_for(cfg.ckpt_path, system)  # Lightning's own errors: a page of missing keys
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    spec = spec_of(system)
    # DDP ranks start as single runs in this job's folder
    prepare_ddp_launch(cfg.trainer, spec is not None and spec.ddp_find_unused_parameters, type(system).__name__)
    trainer = instantiate_trainer(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if os.environ.get("LOCAL_RANK", "0") == "0":  # one process per node, as Lightning calls it
        datamodule.prepare_data()
    return Launch(composed, auto_choices, datamodule, system, trainer)


def train(cfg: DictConfig, launch: Launch | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and test from a composed config (``launch``: its ``prepare``, when the caller made it first);
    returns (fit metrics, test metrics)."""
    from aigc_lab.systems.spec import spec_of
    from aigc_lab.utils.final_metrics import log_hparams_with_metrics, scalar_metrics
    from aigc_lab.utils.run_info import (
        launch_file,
        launch_number,
        print_config_tree,
        save_launch_config,
        write_provenance,
    )

    launch = launch or prepare(cfg)
    datamodule, system, trainer = launch.datamodule, launch.system, launch.trainer
    run_dir = Path(cfg.paths.output_dir)
    number = launch_number(run_dir)  # 0 for a new run, n for its n-th resume: the first launch's files stay
    if cfg.get("print_config", True):
        print_config_tree(cfg, save_to=run_dir / launch_file("config_tree.log", number))
    save_launch_config(run_dir, number, launch.composed)  # .hydra.<n>/ of a resume (Hydra wrote the first .hydra/)
    write_provenance(run_dir, cfg, launch.auto_choices)  # command line, git commit/diff, versions, device, auto values
    spec = spec_of(system)
    if spec is not None:
        spec.run_prepare(cfg)  # prerequisite stages (the GAN's FID classifier), each in a run dir of its own
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams_record(cfg, system))

    if cfg.get("train", True):
        # weights_only=False: our checkpoints hold config objects (partials, dataclasses) in their hparams
        trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=False)
    fit_metrics = dict(trainer.callback_metrics)

    test_metrics: dict[str, Any] = {}
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("No best checkpoint was saved: testing the current weights")
        trainer.test(system, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
        test_metrics = dict(trainer.callback_metrics)
    # TensorBoard's HPARAMS entry of this run, with its final metrics
    log_hparams_with_metrics(trainer.loggers, hparams_record(cfg, system),
                             scalar_metrics({**fit_metrics, **test_metrics}), trainer.global_step)
    return fit_metrics, test_metrics


def check_pairing(system: Any, datamodule: Any) -> None:
    """A system and a datamodule of different systems (``experiment=gan_mnist data=text``) would fail in the
    first batch with a traceback: the system's spec and the datamodule name their conf/data option (classes
    without one are not judged)."""
    from aigc_lab.systems.spec import spec_of

    spec = spec_of(system)
    wanted, given = spec.data_option if spec else None, getattr(datamodule, "data_option", None)
    if wanted and given and wanted != given:
        raise UserError(f"{type(system).__name__} trains on data={wanted}, but this config gives data={given} "
                        f"({type(datamodule).__name__}): use data={wanted}, or the experiment of the system you want")


def hparams_record(cfg: DictConfig, system: Any) -> dict[str, Any]:
    """The flat config and parameter counts shown in TensorBoard's HPARAMS tab."""
    from omegaconf import OmegaConf

    record = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "trainer") if k in cfg}
    record.update(seed=cfg.get("seed"), task_name=cfg.get("task_name"), tags=list(cfg.get("tags") or []))
    record["params/total"] = sum(p.numel() for p in system.parameters())
    record["params/trainable"] = sum(p.numel() for p in system.parameters() if p.requires_grad)
    return record


def optimized_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value of ``optimized_metric`` returned to sweepers, or None without one. A metric the run never logged
    (a run too short to validate, ``model.fid_features=none``, a misspelt name) fails a sweep trial, which has no
    value to return; a single run ends with one warning and no optimized value."""
    if not name:
        return None
    if name in metrics:
        return float(metrics[name])
    logged = ", ".join(sorted(metrics)) or "none"
    reason = f"optimized_metric {name!r} was not logged (no validation ran, or no such metric; logged: {logged})"
    if _in_multirun():
        raise UserError(reason)
    log.warning("%s: this run has no optimized value", reason)
    return None


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from aigc_lab.utils.final_metrics import scalar_metrics, write_metrics
    from aigc_lab.utils.run_info import mark_run
    from aigc_lab.utils.stale_runs import mark_killed_beside

    run_dir = Path(cfg.paths.output_dir)
    launch = check_resume(cfg, run_dir) if resumes_into(run_dir) else None
    mark_killed_beside(run_dir)  # runs of this task (jobs of this sweep) left `running` by a process now gone
    mark_run(run_dir, "running")
    try:
        fit_metrics, test_metrics = train(cfg, launch)
        value = optimized_value({**fit_metrics, **test_metrics}, cfg.get("optimized_metric"))
    except KeyboardInterrupt:  # Ctrl+C outside the fit loop (data preparation, tokenizer training, testing)
        mark_run(run_dir, "interrupted", "Ctrl+C before or after training: no checkpoint was written")
        print(f"\ninterrupted (Ctrl+C); run dir marked interrupted: {run_dir}", file=sys.stderr)
        sys.exit(130)
    except SystemExit as err:  # Lightning's SIGTERMException; the preemption callback (if on) marked the run
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(err, SIGTERMException) and not err.code:
            err.code = 143  # (128 + SIGTERM) without the callback Lightning would exit 0, as if the run were done
        if _status(run_dir) == "running":
            mark_run(run_dir, "interrupted", f"exit code {err.code}; no checkpoint was written on the signal")
        raise
    except Exception as err:
        message = user_message(err)
        mark_run(run_dir, "failed", message or f"{type(err).__name__}: {err}")
        # in a multirun one failed job must not end the others: log it, return NaN
        if _in_multirun():
            log.error("Job failed (run dir marked failed: %s): %s", run_dir, message or f"{type(err).__name__}: {err}",
                      exc_info=message is None)
            return float("nan")
        exit_with(message, f"(run dir marked failed: {run_dir}; HYDRA_FULL_ERROR=1 shows the traceback)")
    # final metrics for the sweep summary; a diverged run (NaN/inf) is not a result
    write_metrics(run_dir, scalar_metrics({**fit_metrics, **test_metrics}))
    return _end_run(run_dir, cfg.get("optimized_metric"), value)


def resumes_into(run_dir: Path) -> bool:
    """Whether this launch continues a run that an earlier launch recorded (resume.py chose its folder), as the
    process that writes the run's record (a DDP rank started by Lightning writes nothing of it)."""
    from aigc_lab.utils.run_info import launch_number

    rank_zero = all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    return launch_number(run_dir) > 0 and rank_zero and not _in_multirun()  # sweep jobs fail as trials


def check_resume(cfg: DictConfig, run_dir: Path) -> Launch:
    """``prepare`` for a launch into an existing run dir, whose log records reach the run's log file only once the
    whole command is accepted. A refused command prints one line and exits with code 1 (Ctrl+C: 130), leaving
    ``run_dir`` byte-identical; a bug keeps its traceback, and the run dir is unchanged too."""
    from aigc_lab.utils.held_logs import file_logs_held

    try:
        with file_logs_held():
            return prepare(cfg)
    except KeyboardInterrupt:
        print(f"\ninterrupted (Ctrl+C) while the resumed command was checked: {run_dir} is unchanged",
              file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        exit_with(user_message(err), f"(refused before anything was written: {run_dir} is unchanged)")


def _end_run(run_dir: Path, name: str | None, value: float | None) -> float | None:
    """Mark a finished run ``done``, or ``failed`` when its optimized metric is NaN/inf: a single run then exits
    with code 1 and one line; a multirun job returns the value, which the sweeper records as a failed trial."""
    from aigc_lab.utils.run_info import mark_run

    if value is None or math.isfinite(value):
        mark_run(run_dir, "done")
        return value
    reason = f"diverged: {name} = {value}"
    mark_run(run_dir, "failed", reason)
    if _in_multirun():  # the other jobs of the sweep go on
        log.error("Job failed (run dir marked failed: %s): %s", run_dir, reason)
        return value
    print(f"\nerror: {reason} (run dir marked failed: {run_dir}; a lower model.lr may help)", file=sys.stderr)
    sys.exit(1)


def _status(run_dir: Path) -> str:
    status = run_dir / "STATUS"
    return status.read_text().split("\n", 1)[0] if status.is_file() else ""


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":
    main()
