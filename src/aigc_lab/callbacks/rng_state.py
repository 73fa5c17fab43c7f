"""Random number generator states in checkpoints, so that a resumed run draws what the first one would have."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

# Lightning's own helpers (used by its isolate_rng): torch, CUDA, numpy and python states in one dict.
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states


class RNGState(L.Callback):
    """Saves the global RNG states (torch, CUDA, numpy, python) in every checkpoint and restores them when
    training resumes from one: Lightning restores weights, optimizers, schedulers and loops, not RNGs.

    The states go back at the point where the interrupted run went on after saving: at the start of the
    next epoch for a checkpoint written at an epoch's end (before that epoch's data loader draws its
    shuffling seed, as in the uninterrupted run), else before the first resumed batch. Until then Lightning
    makes loaders and may run a sanity check, which draw numbers the interrupted run did not. Under DDP the
    checkpoint holds rank zero's states and every rank gets them (``seed_everything`` seeds ranks alike).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return _collect_rng_states(include_cuda=torch.cuda.is_available())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()  # resumed at an epoch's end: Lightning starts the next epoch first

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                             ) -> None:
        self._restore()  # resumed mid-epoch: no epoch start comes before the next batch

    def _restore(self) -> None:
        if self._pending is None:
            return
        states, self._pending = self._pending, None
        cuda = states.pop("torch.cuda", [])
        # CUDA states only onto as many GPUs as saved them (resuming elsewhere leaves them as seeded)
        if torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            states["torch.cuda"] = cuda
        _set_rng_states(states)
