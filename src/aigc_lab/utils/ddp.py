"""DDP started from a Hydra job: every rank in the job's own folder, for single runs and multiruns alike.

Lightning's DDP launcher starts ranks 1..N-1 by re-running the command line (``sys.argv``) with
``hydra.run.dir`` set. Under ``--multirun`` that re-runs the whole sweep in every child (``-m`` is still
in ``sys.argv``), with the sweep's values instead of this job's; after a first job, the parent keeps the
first job's ``LOCAL_RANK``/``MASTER_PORT``/... and its process group, so a second job spawns no children
and hangs. ``prepare_ddp_launch`` (called by ``train`` before the trainer is built) fixes both:

- the child command becomes ``python -m aigc_lab <this job's overrides> hydra.mode=RUN
  hydra.run.dir=<this job's dir> hydra.output_subdir=null hydra.job.name=train_ddp_process_<rank>``
  (plus the job's own hydra overrides but those of sweeps and folders): one single run per rank, in the
  job's folder, writing no ``.hydra/`` of its own (rank zero alone writes STATUS, config, provenance,
  checkpoints, TensorBoard);
- before each later job of the same process, the previous job's process group is destroyed and the
  variables Lightning's launcher set are put back as they were, so the new job launches its own ranks;
- ``strategy: ddp`` becomes ``ddp_find_unused_parameters_true`` for systems whose spec declares
  ``ddp_find_unused_parameters`` (the GAN: each backward pass reaches one of its two networks).

Processes started by an external launcher (torchrun, SLURM's srun) come with their ranks in the environment:
Lightning launches nothing then. They all run the same command into one named folder (``hydra.run.dir``);
``external_rank_overrides`` makes every rank but zero write no ``.hydra/`` of its own there, as above.
"""

from __future__ import annotations

import logging
import os
import sys

from omegaconf import DictConfig

log = logging.getLogger(__name__)

# What lightning's _SubprocessScriptLauncher sets in the parent process when it launches the ranks.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides that belong to the sweep or to the folders, not to one rank's single run.
_SWEEP_KEYS = ("hydra.mode", "hydra.run", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher",
               "hydra/launcher", "hydra.output_subdir", "hydra.job.name", "hydra.job.num", "hydra.job.id")

_env_before_first_job: dict[str, str | None] | None = None


def prepare_ddp_launch(trainer_cfg: DictConfig, find_unused_parameters: bool = False, name: str = "") -> None:
    """Make Lightning launch this Hydra job's ranks into its folder; clean up after a previous job's ranks;
    pick DDP's unused-parameter search when the system (``name``) needs it."""
    from hydra.core.hydra_config import HydraConfig
    from lightning.pytorch.strategies.launchers import subprocess_script

    global _env_before_first_job
    if trainer_cfg.get("strategy") == "ddp" and find_unused_parameters:
        log.info("%s: strategy ddp_find_unused_parameters_true (see its spec)", name)
        trainer_cfg.strategy = "ddp_find_unused_parameters_true"
    if not HydraConfig.initialized():
        return
    if _env_before_first_job is None:
        _env_before_first_job = {key: os.environ.get(key) for key in LAUNCH_ENV}
    elif _env_before_first_job["LOCAL_RANK"] is None:  # we launched ranks before, in an earlier job
        _end_previous_job(_env_before_first_job)
    # Looked up by name in that module at launch time, so replacing it there is enough.
    subprocess_script._hydra_subprocess_cmd = hydra_job_command


def hydra_job_command(local_rank: int) -> tuple[list[str], str]:
    """(command, cwd) that starts rank ``local_rank`` of the current Hydra job as a single run in its folder."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    command = single_run_command(hydra.overrides.task, hydra.overrides.hydra, hydra.runtime.output_dir)
    command += ["hydra.output_subdir=null",  # rank zero writes .hydra/
                f"hydra.job.name=train_ddp_process_{local_rank}"]
    return command, hydra.runtime.cwd


def single_run_command(task_overrides: list[str], hydra_overrides: list[str], run_dir: str) -> list[str]:
    """``python -m aigc_lab`` with a sweep job's overrides, as a single run in ``run_dir`` (the job's folder): the
    hydra overrides of the sweep, the launcher and the folders are left out."""
    from aigc_lab.utils.overrides import quote

    kept = [o for o in hydra_overrides if not o.lstrip("~+").startswith(_SWEEP_KEYS)]
    return [sys.executable, "-m", "aigc_lab", *task_overrides, *kept,
            "hydra.mode=RUN",  # also when a config (hparams_search=...) sets MULTIRUN: one run, no sweep
            f"hydra.run.dir={quote(run_dir)}"]


def _end_previous_job(env_before: dict[str, str | None]) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # its other ranks have exited with their job
    for key, value in env_before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def external_rank() -> int:
    """This process's global rank when torchrun (``RANK``) or srun (``SLURM_PROCID`` of a multi-task step)
    started it, else 0."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def external_rank_overrides(argv: list[str]) -> list[str]:
    """The overrides that keep a rank > 0 of an external launcher from writing ``.hydra/`` into the run's folder
    (rank zero writes it, and everything else, as under Lightning's own launcher)."""
    if external_rank() == 0 or any(a.startswith("hydra.output_subdir=") for a in argv):
        return []
    return ["hydra.output_subdir=null"]
