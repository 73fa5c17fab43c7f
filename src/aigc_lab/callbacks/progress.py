"""The progress display: Rich's live bars in a terminal, plain log lines in a batch job.

Rich draws nothing live when stdout is not a terminal (a SLURM log, ``nohup``, a pipe): the log would stay
empty until the end. There, ``LogProgress`` writes one line every ``every_n_steps`` training steps (and test
batches: ``aigc_lab.eval``) instead: epoch, step (of the total), steps/s, the time left at that rate and the
progress-bar metrics (losses), through the ``aigc_lab`` logger (so also into the run dir's ``<task>.log``).

``LoopProgress`` does the same for loops outside Lightning (``aigc_lab.generate``: sampling, translating a file):
a Rich bar on stderr in a terminal, else a line on stderr every ``every_s`` seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

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

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_start = time.perf_counter()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        done = batch_idx + 1
        if not self._enabled or done % self.every_n_steps:
            return
        total = trainer.num_test_batches[dataloader_idx] if trainer.num_test_batches else float("inf")
        log.info("test %s", rate_line(done, total if total != float("inf") else None,
                                      time.perf_counter() - self._test_start, "batches"))


def total_steps(trainer: L.Trainer) -> int | None:
    """The fit's planned optimizer steps (``max_steps`` as a time budget revises it, else epochs x batches)."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    estimate = trainer.estimated_stepping_batches
    return int(estimate) if estimate != float("inf") else None


def rate_line(done: int, total: int | None, elapsed: float, unit: str) -> str:
    """``120/1,000 batches (12%) | 3.40 batches/s | eta 4m19s`` (the share and eta when the total is known)."""
    rate = done / max(elapsed, 1e-9)
    speed = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
    if total is None:
        return f"{done:,} {unit} | {speed} {unit}/s"
    eta = duration(max(total - done, 0) / rate) if rate > 0 else "?"
    return f"{done:,}/{total:,} {unit} ({100 * done / max(total, 1):.0f}%) | {speed} {unit}/s | eta {eta}"


T = TypeVar("T")


class LoopProgress:
    """Progress of a loop of ``total`` units outside Lightning: ``with LoopProgress(...) as progress:`` then
    ``progress.advance(n)``, or ``progress.track(items, size)``. In a terminal (stderr), a Rich bar; else a line
    on stderr at most every ``every_s`` seconds (``what: done/total unit (share) | rate | eta``) and a last one at
    the end when any was written. ``force``: ``rich`` or ``log`` regardless of the terminal."""

    def __init__(self, total: int, unit: str, what: str, every_s: float = 10.0, force: str | None = None) -> None:
        if force not in (None, "rich", "log"):
            raise ValueError(f"force must be rich, log or null, got {force!r}")
        self.total, self.unit, self.what, self.every_s = total, unit, what, every_s
        self.rich = force == "rich" or (force is None and sys.stderr.isatty())
        self.done = 0
        self._bar: Any = None
        self._start = self._last = 0.0
        self._lines = 0

    def __enter__(self) -> LoopProgress:
        self._start = self._last = time.perf_counter()
        if self.rich:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(self.unit), TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s and self.done < self.total:
            self._write(now)

    def track(self, items: Iterable[T], size: Any = None) -> Iterator[T]:
        """Yield ``items``, advancing by ``size(item)`` (1 without ``size``) after each is consumed."""
        for item in items:
            yield item
            self.advance(size(item) if size is not None else 1)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif kind is None and self._lines:  # a long loop: say it ended (a short one says nothing)
            self._write(time.perf_counter())

    def _write(self, now: float) -> None:
        self._last = now
        self._lines += 1
        print(f"{self.what}: {rate_line(self.done, self.total, now - self._start, self.unit)}", file=sys.stderr,
              flush=True)


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
