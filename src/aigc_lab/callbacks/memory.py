"""Free heap memory back to the kernel at phase boundaries (``utils/malloc.py``, ``release_freed_memory``).

Validation and test batches are larger than training batches (``data.eval_max_tokens``) and beam search
allocates per decoding step, so each phase leaves its own free heap behind; with varying batch shapes glibc
cannot reuse or trim all of it, and the whole command's peak becomes the sum of the phases' leftovers rather
than the largest phase. Releasing the free pages before and after each evaluation, and every ``every_n_steps``
training steps, keeps the resident memory at what is alive plus one phase's working set. The cost is the page
faults of touching the released pages again: a fraction of a second per release.
"""

from __future__ import annotations

import lightning as L

from aigc_lab.utils.malloc import release_freed_memory


class ReleaseFreedMemory(L.Callback):
    def __init__(self, every_n_steps: int | None = 100) -> None:
        """``every_n_steps``: also release during training every this many optimizer steps (null: only at the
        phase boundaries)."""
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"callbacks.release_memory.every_n_steps must be >= 1 or null, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.released = 0  # how many releases freed memory (for tests and curiosity)

    def release(self) -> None:
        self.released += release_freed_memory()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0:
            self.release()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.release()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.release()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.release()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.release()
