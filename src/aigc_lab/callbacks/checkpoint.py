"""Lightning's ``ModelCheckpoint`` with two changes to how it picks the best checkpoint:

- a NaN or inf monitored metric is never "best": no top-k checkpoint is saved for it (Lightning 2.6 replaces a
  NaN by the worst value and still saves it while it holds fewer than ``save_top_k`` checkpoints, so a diverged
  run's only "best" checkpoint is a broken one). ``last.ckpt`` is another callback's and is still written;
- a monitored metric that the run never logs (``model.fid_features=none`` leaves ``val/fid`` out) keeps the
  latest checkpoint instead, with one warning, where Lightning raises ``MisconfigurationException`` after the
  fit's first validation. Before any validation (a run without one) the latest is kept without a warning.

The class keeps Lightning's name, so checkpoints hold its state under the same key and resume either way.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from torch import Tensor

log = logging.getLogger("aigc_lab")


class ModelCheckpoint(LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint``, whose best checkpoint always has a finite monitored
    metric, and which keeps the latest checkpoint when the monitored metric is never logged."""

    _told_unvalidated = False  # each message once per run
    _warned_missing = False
    _warned_nonfinite = False

    def check_monitor_top_k(self, trainer: L.Trainer, current: Tensor | None = None) -> bool:
        """Whether ``current`` earns a top-k checkpoint: never when it is NaN or inf."""
        if current is None:
            return False
        # every rank decides alike: a rank that skipped Lightning's own vote below would leave the others waiting
        finite = trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(current).all()), all=True)
        if not finite:
            self._warn_nonfinite(trainer, current)
            return False
        return super().check_monitor_top_k(trainer, current)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.save_top_k == 0 or self.monitor is None or self.monitor in monitor_candidates:
            super()._save_topk_checkpoint(trainer, monitor_candidates)
            return
        self._warn_missing(trainer, monitor_candidates)
        self._save_none_monitor_checkpoint(trainer, monitor_candidates)

    def _warn_missing(self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if not trainer.is_global_zero:
            return
        validated = getattr(trainer.fit_loop.epoch_loop.val_loop, "_has_run", True)
        if not validated and not self._told_unvalidated:
            self._told_unvalidated = True
            log.info("no validation has run: checkpoint kept for the latest step, not the best %s", self.monitor)
        elif validated and not self._warned_missing:
            self._warned_missing = True
            logged = ", ".join(sorted(k for k in monitor_candidates if k not in ("epoch", "step"))) or "none"
            log.warning("checkpoint monitor %r is not logged by this run (logged: %s): keeping the latest checkpoint "
                        "instead of the best", self.monitor, logged)

    def _warn_nonfinite(self, trainer: L.Trainer, current: Tensor) -> None:
        if trainer.is_global_zero and not self._warned_nonfinite:
            self._warned_nonfinite = True
            log.warning("checkpoint monitor %r is %s at step %d: no best checkpoint is saved for a non-finite value",
                        self.monitor, current.item(), trainer.global_step)
