"""A test-only callback that interrupts training after step ``$STOP_AT_STEP`` (unset: never), as a crash or a
preemption would, with the config of the uninterrupted run (tests/test_resume.py)."""

from __future__ import annotations

import os

import lightning as L


class StopAt(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        stop = os.environ.get("STOP_AT_STEP")
        if stop and trainer.global_step >= int(stop):
            trainer.should_stop = True
