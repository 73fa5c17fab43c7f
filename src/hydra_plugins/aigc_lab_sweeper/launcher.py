"""``hydra/launcher=devices``: the jobs of a sweep in parallel, one per device, each in a fresh process.

Each job runs as ``python -m aigc_lab <its overrides> hydra.mode=RUN hydra.run.dir=<its folder>`` (the command a
DDP rank runs too, ``utils/ddp.py``) with ``CUDA_VISIBLE_DEVICES`` set to the device it holds: as many jobs run at
once as there are devices, and a job that ends frees its device for the next one. A fresh process per job is what
makes the device choice stick: a worker process of joblib runs many jobs, and CUDA reads ``CUDA_VISIBLE_DEVICES``
once per process. It also keeps a crashing job (a segfault, an out-of-memory kill) from taking the sweep down: the
job is a failed trial.

``devices``: the device ids to share out, e.g. ``[0, 1, 2, 3]``, or ``auto`` (every GPU this process sees; on a
machine without one, ``cpu_jobs`` jobs at once, which see no GPU). A job's return value is its optimized metric,
read from the ``metrics.json`` it writes (NaN when it failed: its ``STATUS`` says why).
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class DevicesLauncher(Launcher):
    def __init__(self, devices: Any = "auto", cpu_jobs: int = 2) -> None:
        self.devices, self.cpu_jobs = devices, cpu_jobs
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def slots(self) -> list[str | None]:
        """The devices jobs hold, one job each (None: a CPU slot)."""
        if self.devices != "auto":
            return [str(d) for d in self.devices]
        import torch

        if torch.cuda.is_available():
            return [str(i) for i in range(torch.cuda.device_count())]
        return [None] * max(1, self.cpu_jobs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        free: queue.Queue[str | None] = queue.Queue()
        slots = self.slots()
        for slot in slots:
            free.put(slot)
        log.info("Launching %d job(s), %d at once (devices: %s)", len(job_overrides), len(slots),
                 ", ".join(s for s in slots if s is not None) or "none, CPU")

        def run(idx: int, overrides: Sequence[str]) -> JobReturn:
            device = free.get()
            try:
                return self._run_job(idx, list(overrides), device)
            finally:
                free.put(device)

        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            jobs = [pool.submit(run, initial_job_idx + i, o) for i, o in enumerate(job_overrides)]
            return [job.result() for job in jobs]

    def _run_job(self, idx: int, overrides: list[str], device: str | None) -> JobReturn:
        from aigc_lab.utils.ddp import single_run_command

        assert self.config is not None and self.hydra_context is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.num = idx  # the folder of job N: sweep.subdir, ${hydra.job.num} by default
            run_dir = str(Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir))
            cfg.hydra.runtime.output_dir = run_dir  # where the sweeper reads the job's STATUS
        command = single_run_command(list(cfg.hydra.overrides.task), list(cfg.hydra.overrides.hydra), run_dir)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if device is None else device}
        log.info("#%d on %s: %s", idx, f"device {device}" if device is not None else "CPU", " ".join(overrides))
        proc = subprocess.run(command, env=env, cwd=os.getcwd())
        value = _objective(Path(run_dir), cfg.get("optimized_metric")) if proc.returncode == 0 else math.nan
        result = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=cfg, working_dir=os.getcwd(),
                           task_name=cfg.hydra.job.name, status=JobStatus.COMPLETED)
        result.return_value = value
        return result


def _objective(run_dir: Path, metric: str | None) -> float | None:
    """The job's optimized metric from its ``metrics.json`` (None: no optimized metric)."""
    if not metric:
        return None
    try:
        return float(json.loads((run_dir / "metrics.json").read_text())[metric])
    except (OSError, KeyError, ValueError):
        return math.nan
