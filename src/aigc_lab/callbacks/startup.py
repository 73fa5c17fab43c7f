"""How long a run takes from the command to its first training step."""

from __future__ import annotations

import logging
import time

import lightning as L

import aigc_lab

log = logging.getLogger(__name__)


class StartupTimer(L.Callback):
    """Logs ``perf/time_to_first_step_s``: seconds from the package import to the first training batch."""

    def __init__(self) -> None:
        self.seconds: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.seconds is not None:
            return
        self.seconds = time.perf_counter() - aigc_lab.STARTED_AT
        log.info("first training step %.1f s after the command started", self.seconds)
        for logger in trainer.loggers:
            logger.log_metrics({"perf/time_to_first_step_s": self.seconds}, step=trainer.global_step)
