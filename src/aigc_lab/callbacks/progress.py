"""The progress display: Rich's live bars in a terminal, plain log lines in a batch job.

Rich draws nothing live when stdout is not a terminal (a SLURM log, ``nohup``, a pipe): the log would stay
empty until the end. There, ``LogProgress`` writes one line every ``every_n_steps`` training steps instead:
epoch, step (of the total), steps/s, the time left at that rate and the progress-bar metrics (losses), through
the ``aigc_lab`` logger (so also into the run dir's ``<task>.log``).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

log = logging.getLogger("aigc_lab")


def progress_bar(refresh_rate: int = 1, every_n_steps: int = 50, force: str | None = None) -> ProgressBar:
    """RichProgressBar(refresh_rate) when stdout is a terminal, else LogProgress(every_n_steps).
    ``force``: ``rich`` or ``log`` to choose regardless of the terminal."""
    if force not in (None, "rich", "log"):
        raise ValueError(f"force must be rich, log or null, got {force!r}")
    rich = force == "rich" or (force is None and sys.stdout.isatty())
    return RichProgressBar(refresh_rate=refresh_rate) if rich else LogProgress(every_n_steps)


class LogProgress(ProgressBar):
    """One log line every ``every_n_steps`` training steps, and one per finished validation."""

    def __init__(self, every_n_steps: int = 50) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._since: tuple[float, int] = (0.0, 0)  # (time, global step) of the last line

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self._enabled or step == self._since[1] or step % self.every_n_steps:
            return
        now = time.perf_counter()
        rate = (step - self._since[1]) / max(now - self._since[0], 1e-9)
        self._since = (now, step)
        total = total_steps(trainer)
        eta = f" | eta {duration(max(total - step, 0) / rate)}" if total and rate > 0 else ""
        log.info("epoch %d step %d%s | %.2f steps/s%s | %s", trainer.current_epoch, step, f"/{total}" if total else "",
                 rate, eta, _metrics(self.get_metrics(trainer, pl_module)))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and not trainer.sanity_checking:
            log.info("validation at step %d | %s", trainer.global_step,
                     _metrics({k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}))


def total_steps(trainer: L.Trainer) -> int | None:
    """The fit's planned optimizer steps (``max_steps`` as a time budget revises it, else epochs x batches)."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    estimate = trainer.estimated_stepping_batches
    return int(estimate) if estimate != float("inf") else None


def duration(seconds: float) -> str:
    """``95.2`` -> ``1m35s``; ``4000`` -> ``1h06m``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for name, value in metrics.items():
        if name == "v_num":
            continue
        value = float(value) if hasattr(value, "item") or isinstance(value, (int, float)) else value
        parts.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    return " ".join(parts)
