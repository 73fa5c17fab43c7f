"""A fit that takes at most ``minutes`` of wall time on any machine, with its schedule run to its end.

The schedule follows elapsed time, as in Cramming (Geiping & Goldstein, 2022): every step the callback projects
how many steps fit into the budget at the rate measured so far (validations included), caps that at the
config's planned steps, and makes it ``trainer.max_steps``. The systems' learning-rate schedules read
``trainer.max_steps`` live (``systems/schedule.py``), so warm-up and decay stretch or shrink to the steps this
machine can take, and the last step lands at the budget with the rate at its end. The fit then stops with a
validation, as after early stopping. A machine fast enough for the planned steps simply runs them.

Lightning's ``max_time`` cuts a fit wherever its schedule is; this callback replaces it. The elapsed time is part
of the checkpoint, so a resumed run keeps its budget. The steps taken are logged (``time_budget/steps``) and a
run can be repeated step for step, without the budget, with ``trainer.max_steps=<steps>
callbacks.time_budget.minutes=null`` (the same steps, under a step-based schedule).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L

from aigc_lab.errors import ConfigError

log = logging.getLogger("aigc_lab")


class TimeBudget(L.Callback):
    """``minutes``: the fit's wall-time budget (training and validation; not data setup or the test), or None
    (off). ``warmup_steps``: steps before the rate is trusted (the first ones pay one-time costs)."""

    def __init__(self, minutes: float | None = None, warmup_steps: int = 5) -> None:
        if minutes is not None and not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
            raise ConfigError(f"callbacks.time_budget.minutes must be a positive number of minutes or null, "
                              f"got {minutes!r}")
        if warmup_steps < 1:
            raise ConfigError(f"callbacks.time_budget.warmup_steps must be >= 1, got {warmup_steps}")
        self.budget_s = None if minutes is None else 60.0 * float(minutes)
        self.warmup_steps = warmup_steps
        self.elapsed_before = 0.0  # fit time of earlier launches of this run (from the checkpoint)
        self.planned: int | None = None  # the config's steps, before the budget
        self.projected: int | None = None
        self._start = 0.0
        self._mark: tuple[float, int] | None = None  # (time, step) from which the rate is measured
        self._first_step = 0  # the global step this launch started at

    @property
    def state_key(self) -> str:
        return "TimeBudget"

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._start if self._start else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget_s is None:
            return
        self._start = time.monotonic()
        self._mark, self._first_step = None, trainer.global_step
        if self.planned is None:
            self.planned = config_steps(trainer)
        steps = self.projected or self.planned
        if steps is not None:
            trainer.fit_loop.epoch_loop.max_steps = steps
        log.info("time budget: %.1f min for the fit (%.1f used before), at most %s steps", self.budget_s / 60,
                 self.elapsed_before / 60, self.planned if self.planned is not None else "unbounded")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.budget_s is None:
            return
        step, now = trainer.global_step, time.monotonic()
        if self._mark is None:
            if step - self._first_step >= self.warmup_steps:
                self._mark = (now, step)
            return
        elapsed = self.elapsed()
        done = step - self._mark[1]
        projected = self.projected
        if done > 0:
            rate = done / (now - self._mark[0])  # steps per wall second since the mark, validations included
            projected = step + int(max(self.budget_s - elapsed, 0.0) * rate)
            if self.planned is not None:
                projected = min(projected, self.planned)
            projected = max(projected, step)
        stop = elapsed >= self.budget_s or (projected is not None and step >= projected)
        # Every rank follows rank zero's clock: ranks that stopped at different steps would hang in a collective.
        self.projected, stop = trainer.strategy.broadcast((projected, stop), src=0)
        if self.projected is not None:
            trainer.fit_loop.epoch_loop.max_steps = self.projected
        if stop:
            trainer.fit_loop.epoch_loop.max_steps = step
            trainer.should_stop = True  # Lightning validates once more, then ends the fit

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.budget_s is None:
            return
        elapsed = self.elapsed()
        log.info("time budget: the fit took %d steps in %.1f of %.1f min (planned %s); repeat them without the "
                 "budget: trainer.max_steps=%d callbacks.time_budget.minutes=null", trainer.global_step,
                 elapsed / 60, self.budget_s / 60, self.planned, trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics({"time_budget/steps": float(trainer.global_step),
                                "time_budget/fit_minutes": elapsed / 60}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed(), "budget_s": self.budget_s, "planned": self.planned,
                "projected": self.projected}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("elapsed_s", 0.0))
        if self.budget_s is not None and state_dict.get("budget_s") == self.budget_s:
            self.planned = state_dict.get("planned")
            self.projected = state_dict.get("projected")


def config_steps(trainer: L.Trainer) -> int | None:
    """The optimizer steps the config asks for (``max_steps``, else epochs x batches); None when unbounded."""
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return int(trainer.max_steps)
    estimate = trainer.estimated_stepping_batches
    return int(estimate) if math.isfinite(estimate) else None
