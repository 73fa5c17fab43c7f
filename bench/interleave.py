"""The Lightning callback behind ``bench/overhead_paired.py``: the plain loop's steps run between the launcher's.

``bench/overhead_paired.py`` builds the hand-written loop of bench/plain_loop.py in its process, registers it
here (``PLAIN``, and the random state right after building it, ``PLAIN_RNG``) and then starts the real launcher
in the same process with this callback added
(``+callbacks.interleave._target_=interleave.Interleave``, ``bench/`` on ``PYTHONPATH``). Every ``block``
launcher steps, at the start of a launcher batch, the callback runs ``block`` plain steps. The two paths
alternate every second or so and share whatever the machine is doing: slow drift of the CPU's speed, which on
this machine moves a 65 ms step by +-10% between runs, falls on both alike.

Timing: a launcher step is the time between its batch start and the next batch start, the plain block (run in
between) left out; a plain step is the same for the plain loop, which fetches one batch ahead, as Lightning
does. Each path keeps its own random-number streams (torch, CUDA, numpy, python): the states are swapped at
each switch, so each draws exactly what it would draw alone, and their losses agree step for step. Both copy
their losses to the host on logging steps only (bench/step_clock.py).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from plain_loop import PlainLoop, batches, to_device
from step_clock import logging_step, write_json


@dataclass
class RngState:
    """The generators that the systems draw from: python, numpy, torch's CPU and (if any) CUDA ones."""

    python: Any = None
    numpy: Any = None
    cpu: torch.Tensor | None = None
    cuda: list[torch.Tensor] = field(default_factory=list)

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)


PLAIN: PlainLoop | None = None  # set by overhead_paired.py before the launcher starts
PLAIN_RNG: RngState | None = None  # the random state right after the plain loop was built (ditto)


class Interleave(L.Callback):
    """Runs ``block`` plain steps before every ``block``-th launcher step; records both paths' step times.

    At the end of training it writes the JSON file ``out``: ``{"launcher": [s, ...], "plain": [s, ...],
    "losses": {"launcher": {"train/loss": [...]}, "plain": {...}}}``, the seconds of each launcher step (batch
    start to next batch start, the plain block left out) and of each plain step, and the first
    ``record_losses`` logging steps' losses of each path.
    """

    def __init__(self, out: str, block: int = 10, record_losses: int = 0) -> None:
        if PLAIN is None or PLAIN_RNG is None:
            raise RuntimeError("interleave.PLAIN and PLAIN_RNG are not set: bench/overhead_paired.py sets them")
        self.out, self.block, self.record_losses = out, block, record_losses
        # Not the state now: the launcher has seeded and drawn (data module, system) since the plain loop was built.
        self.plain_rng = PLAIN_RNG
        self.plain_batches = batches(PLAIN)
        self.next_plain_batch: Any = None
        self.launcher: list[float] = []
        self.plain: list[float] = []
        self.losses: dict[str, dict[str, list[float]]] = {"launcher": {}, "plain": {}}
        self._start: float | None = None
        self.every = 1  # trainer.log_every_n_steps, read at the first batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                             ) -> None:
        now = time.perf_counter()
        self.every = trainer.log_every_n_steps
        if self._start is not None:
            self.launcher.append(now - self._start)
        if trainer.global_step % self.block == 0:
            launcher_rng = RngState.capture()
            self.plain_rng.restore()
            with torch.enable_grad():
                self._plain_block()
            self.plain_rng = RngState.capture()
            launcher_rng.restore()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._record(len(self.launcher) + 1, "launcher"):  # this step's time is appended at the next start
            for key, value in trainer.callback_metrics.items():
                if key.startswith("train/loss"):
                    self.losses["launcher"].setdefault(key, []).append(float(value))

    def _record(self, batches_done: int, path: str) -> bool:
        """Whether to copy this step's losses: the first ``record_losses`` logging steps (bench/step_clock.py)."""
        recorded = len(next(iter(self.losses[path].values()), []))
        return recorded < self.record_losses and logging_step(batches_done, self.every)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        write_json(self.out, {"launcher": self.launcher, "plain": self.plain, "losses": self.losses})

    def _plain_block(self) -> None:
        """``block`` plain steps, each timed from its batch start to the next one (fetched ahead, as Lightning)."""
        assert PLAIN is not None
        if self.next_plain_batch is None:
            self.next_plain_batch = next(self.plain_batches)
        for _ in range(self.block):
            start = time.perf_counter()
            out = PLAIN.step(to_device(self.next_plain_batch, PLAIN.device))
            self.next_plain_batch = next(self.plain_batches, None)
            self.plain.append(time.perf_counter() - start)
            if self._record(len(self.plain), "plain"):
                for key, value in out.items():
                    self.losses["plain"].setdefault(key, []).append(float(value))
            if self.next_plain_batch is None:
                return
