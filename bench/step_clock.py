"""Benchmark helpers shared by bench/overhead.py, bench/gpu_steps.py and the speed benches.

``StepClock`` is the minimal Lightning callback that bench/overhead.py adds to the real launcher
(``+callbacks.step_clock._target_=step_clock.StepClock``, with ``bench/`` on ``PYTHONPATH``): one
``time.perf_counter()`` per training batch, taken in ``on_train_batch_start`` (after the batch was fetched
and moved to the device), and the ``train/loss*`` values of the first ``record_losses`` logging steps. The
hand-written loop of bench/plain_loop.py takes the same timestamps at the same place, so step times compare.

Logging steps: every ``trainer.log_every_n_steps``-th batch (``logging_step``), the steps whose logged values
Lightning writes and the only ones on which the GAN logs its losses (``aigc_lab.systems.step_logs``). Both
paths copy their losses to the host on those steps only, as any loop that prints its loss every N steps does.

``reset_peak_memory`` / ``peak_memory_bytes``: the peak memory of a stretch of work: CUDA's
``max_memory_allocated`` on a GPU, else the process's peak RSS (``VmHWM``, which Linux resets when "5" is
written to ``/proc/self/clear_refs``; without that, ``getrusage``'s lifetime maximum).
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


def logging_step(batches_done: int, every: int) -> bool:
    """Whether the batch that brings the count of trained batches to ``batches_done`` is a logging step."""
    return batches_done % max(every, 1) == 0


class StepClock(L.Callback):
    """Timestamps of every training batch start; losses of the first ``record_losses`` logging steps; a JSON
    file ``out`` at the end of training: ``{"starts": [s, ...], "end": s, "losses": {"train/loss": [...], ...}}``.
    """

    def __init__(self, out: str | None = None, record_losses: int = 0) -> None:
        self.out, self.record_losses = out, record_losses
        self.starts: list[float] = []
        self.end: float | None = None
        self.losses: dict[str, list[float]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                             ) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        recorded = len(next(iter(self.losses.values()), []))
        if recorded < self.record_losses and logging_step(len(self.starts), trainer.log_every_n_steps):
            for key, value in trainer.callback_metrics.items():
                if key.startswith("train/loss"):
                    self.losses.setdefault(key, []).append(float(value))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end = time.perf_counter()
        if self.out:
            write_json(self.out, {"starts": self.starts, "end": self.end, "losses": self.losses})


def write_json(path: str | Path, record: dict) -> None:
    Path(path).write_text(json.dumps(record))


# ---------------------------------------------------------------- peak memory
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device | str = "cpu") -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's RSS high-water mark."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):  # without a reset, peak_memory_bytes reports the lifetime peak
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: resets VmHWM to the current RSS


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Peak bytes since reset_peak_memory: CUDA max allocated, else peak RSS."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:  123456 kB"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
