"""Learning-rate schedules over a fit's planned optimizer steps, read live.

``planned_steps`` is re-read at every step: a time budget (``callbacks/time_budget.py``) revises
``trainer.max_steps`` to the steps this machine can take, and the schedules stretch or shrink with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L

from aigc_lab.errors import ConfigError


def planned_steps(trainer: L.Trainer) -> Callable[[], int]:
    """A function giving the fit's total optimizer steps now: ``trainer.max_steps`` when set (and as a time
    budget revises it), else epochs x batches as estimated when the optimizers were built."""
    estimate = trainer.estimated_stepping_batches
    if not math.isfinite(estimate):
        raise ConfigError("the learning-rate schedule needs a length: set trainer.max_steps or trainer.max_epochs "
                          "(or callbacks.time_budget.minutes with one of them as the cap)")
    fixed = max(int(estimate), 1)

    def total() -> int:
        steps = trainer.max_steps
        return max(int(steps), 1) if steps is not None and steps > 0 else fixed

    return total


def warmup_then_decay(total: Callable[[], int], warmup_ratio: float, schedule: str,
                      floor: float) -> Callable[[int], float]:
    """LambdaLR factor: ``lr_factor`` with its warm-up a fixed share of the live total."""

    def factor(step: int) -> float:
        steps = total()
        return lr_factor(step, total=steps, warmup=int(warmup_ratio * steps), schedule=schedule, floor=floor)

    return factor


def lr_factor(step: int, total: int, warmup: int, schedule: str, floor: float) -> float:
    """Multiplier of the peak learning rate: linear warm-up over ``warmup`` steps, then decay to ``floor``:
    cosine or linear over the remaining steps, none (constant), or inverse_sqrt: sqrt(warmup / step)
    (Vaswani et al., 2017; 1 at the end of the warm-up, with no end point, floored at ``floor``)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "inverse_sqrt":
        return max(floor, math.sqrt(max(warmup, 1) / max(step, 1)))
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return floor + (1.0 - floor) * shape


def constant_then_linear(total: Callable[[], int], decay_start: float) -> Callable[[int], float]:
    """LambdaLR factor: 1 for the first ``decay_start`` share of the steps, then linear to 0 at the end."""

    def factor(step: int) -> float:
        steps = total()
        decay_from = int(decay_start * steps)
        return 1.0 if step < decay_from else max(0.0, (steps - step) / max(steps - decay_from, 1))

    return factor
