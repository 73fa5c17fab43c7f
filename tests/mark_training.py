"""A test-only callback for signal tests through the CLI (tests/test_faults.py): once ``global_step`` reaches
``$MARK_AT_STEP`` (unset: never) it touches ``$MARK_FILE``, so the test knows training is under way, and slows
every later step by ``$SLOW_STEP_S`` seconds, so that a signal sent then lands well before the planned end."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L


class MarkTraining(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        at = os.environ.get("MARK_AT_STEP")
        if at and trainer.global_step >= int(at):
            Path(os.environ["MARK_FILE"]).touch()
            time.sleep(float(os.environ.get("SLOW_STEP_S", "0.2")))
