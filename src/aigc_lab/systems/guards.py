"""Non-finite (NaN or inf) training losses, detected at once and handled by ``model.nonfinite_loss``:

- ``stop`` (the default): raise ``NonFiniteLossError`` naming the loss, its value, the step and the fixes. No
  checkpoint is written from the failing state (the weights are still those of the last good step, but the
  optimizer may have seen inf gradients before), so the last checkpoint saved stays the last good one.
- ``skip``: skip that optimizer step (no backward pass, no update), count it in ``train/nonfinite_steps``
  (saved in checkpoints, so the count survives a resume) and go on. With automatic optimization the system's
  ``training_step`` returns None, which Lightning turns into "no step" (it still counts the batch in
  ``global_step``, and step-wise learning-rate schedules move on); the GAN skips the network's backward
  pass and step itself (a skipped generator step is not counted: its ``global_step`` counts generator
  updates).

Under DDP the check is all-reduced, so every rank skips or stops together (one rank stepping alone would hang
the gradient all-reduce). The check reads the loss on the host: one device sync per loss, as the progress bar
makes anyway.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from aigc_lab.errors import UserError
from aigc_lab.utils.validate import one_of

log = logging.getLogger("aigc_lab")

POLICIES = ("stop", "skip")
CHECKPOINT_KEY = "nonfinite_steps"


class NonFiniteLossError(UserError):
    """A NaN or inf training loss under ``model.nonfinite_loss=stop``."""


def check_policy(policy: str) -> None:
    one_of("model.nonfinite_loss", policy, POLICIES)


class NonFiniteLossGuard:
    """Mixin of ``System`` (systems/spec.py: a ``spec`` and a ``nonfinite_loss`` hyperparameter): ``loss_is_finite``
    before each backward pass, and the skip count in checkpoints. A system's own ``on_save_checkpoint`` and
    ``on_load_checkpoint`` must call ``super()``."""

    nonfinite_steps: int = 0

    def step_loss(self, loss: torch.Tensor, name: str = "train/loss") -> torch.Tensor | None:
        """A training step's answer to automatic optimization: ``loss``, logged as ``name`` (progress bar too), or
        None when the policy skips a non-finite loss (Lightning then takes no optimizer step for this batch)."""
        if not self.loss_is_finite(loss, name):
            return None
        self.log(name, loss, prog_bar=True)
        return loss

    def loss_is_finite(self, loss: torch.Tensor, name: str) -> bool:
        """True when ``loss`` is finite on every rank. Otherwise, by policy: skip (count, log, return False;
        the caller then takes no step) or stop (raise NonFiniteLossError)."""
        trainer = self.trainer
        bad = not bool(torch.isfinite(loss.detach()).all())
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return True
        value = loss.detach().float().item()  # this rank's: finite when only another rank's loss is not
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch})"
        if self.hparams.get("nonfinite_loss", "stop") == "stop":
            fp16 = "32-true or bf16-mixed instead of 16-mixed precision, " if trainer.precision == "16-mixed" else ""
            raise NonFiniteLossError(
                f"{name} is {value} at {where}: training stopped; {_last_good_checkpoint(trainer)}. Fixes: a lower "
                f"learning rate (model.lr), gradient clipping ({self.spec.clip_option}), {fp16}or "
                f"model.nonfinite_loss=skip to skip such steps")
        self.nonfinite_steps += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps))
        if trainer.is_global_zero and (self.nonfinite_steps <= 5 or math.log10(self.nonfinite_steps).is_integer()):
            log.warning("%s is %s at %s: step skipped (%d so far; model.nonfinite_loss=skip)", name, value, where,
                        self.nonfinite_steps)
        return False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.nonfinite_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_steps = int(checkpoint.get(CHECKPOINT_KEY, 0))


def _last_good_checkpoint(trainer: Any) -> str:
    """Where the last checkpoint was saved (the newest file any checkpoint callback wrote), for the message."""
    paths = {Path(p) for cb in trainer.checkpoint_callbacks
             for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")) if p}
    existing = [p for p in paths if p.is_file()]
    if not existing:
        return "no checkpoint had been saved yet"
    newest = max(existing, key=lambda p: p.stat().st_mtime)
    return (f"the last good checkpoint, {newest}, is kept (resume from it with a fix: "
            f"python -m aigc_lab ckpt_path={newest} ...)")
