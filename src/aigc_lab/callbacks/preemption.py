"""SIGTERM (cluster pre-emption, ``kill``) and Ctrl+C (SIGINT) during training: save a resumable checkpoint and
exit cleanly, with a one-line message that says how to resume.

Lightning does most of it: its signal connector turns SIGTERM into ``trainer.received_sigterm`` (broadcast to
every rank under DDP), and at the next batch boundary the loops raise ``SIGTERMException`` (a ``SystemExit``),
which reaches every callback's ``on_exception`` before it is re-raised. Left alone, that exits with code 0,
saves nothing and leaves ``STATUS`` saying ``running``. This callback, in ``on_exception``:

- saves ``<run dir>/checkpoints/last.ckpt`` with ``trainer.save_checkpoint`` (every rank calls it; rank zero
  writes, through the atomic checkpoint IO plugin). The state is consistent: the interrupted batch finished,
  and Lightning resumes from it (``python -m aigc_lab ckpt_path=<run dir>``, see ``aigc_lab.resume``);
- marks the run dir ``interrupted`` and logs the step, the checkpoint and the resume command;
- sets the exception's exit code: 143 for SIGTERM, 130 for Ctrl+C (128 + the signal, as shells report a
  process killed by it). A ``SystemExit`` prints no traceback. In a multirun it ends the whole sweep: a
  pre-empted or interrupted sweep stops, and no job is recorded as a failed trial (see README, Faults).

Ctrl+C: Python raises ``KeyboardInterrupt`` wherever the main thread is, often mid-step (between a backward pass
and its optimizer step), where no consistent checkpoint exists, and Lightning then exits with code 1. So during
training the first Ctrl+C is routed into Lightning's SIGTERM path (``os.kill(own pid, SIGTERM)``: its flag is
set, the stop waits for the batch boundary). A second Ctrl+C stops at once: the run dir is marked interrupted
and the process exits with 130 through ``os._exit``, without saving, flushing loggers or running any more
cleanup (a ``KeyboardInterrupt`` raised there could land in another callback's cleanup and escape as a
traceback, leaving ``STATUS`` at ``running``). Checkpoints are safe either way: they are written atomically.
Under DDP every rank receives a terminal's Ctrl+C; ranks other than zero leave the graceful stop to rank zero,
whose SIGTERM Lightning forwards to them.

Errors (a NaN loss with ``model.nonfinite_loss=stop``, a full disk, a bug) save nothing here: the last good
checkpoint stays the last one.

Under an entry point (``python -m aigc_lab``) the guard of ``utils/signals.py`` also watches: a batch that has
not reached its boundary a few seconds after the signal is stopped where it is (no checkpoint for it), and a
second signal of a kind stops at once even inside a long native operation, where no Python handler (this
callback's included) can run. Stages outside the fit loop (data preparation, setup, the final test) are its.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aigc_lab.errors import UserError
from aigc_lab.utils.run_info import mark_run
from aigc_lab.utils.signals import active_guard, stop_begun

log = logging.getLogger("aigc_lab")

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number


class Preemption(L.Callback):
    """Saves ``<run_dir>/checkpoints/last.ckpt`` on SIGTERM or a first Ctrl+C and exits with 143 / 130."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = Path(run_dir)
        self._signal = signal.SIGTERM  # what stopped the run: SIGTERM unless our Ctrl+C handler saw one first
        self._previous_sigint: Any = None
        self._installed = False
        self._trainer: L.Trainer | None = None
        self._pid = os.getpid()

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    # ------------------------------------------------------------ Ctrl+C during training
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Installed here, not in setup: Lightning's SIGTERM handler (which our Ctrl+C handler relies on) is
        # registered after setup, just before the loops run.
        if threading.current_thread() is threading.main_thread():
            self._signal = signal.SIGTERM
            self._trainer = trainer
            self._pid = os.getpid()
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker, which inherits this handler: the training process stops it
        trainer = self._trainer
        if self._signal == signal.SIGINT:  # the second Ctrl+C
            if active_guard() is not None:
                return  # the entry point's guard saw both (even inside a native op) and stops the process at once
            self._stop_now(trainer)
        self._signal = signal.SIGINT
        if not trainer.is_global_zero:
            return  # under DDP rank zero stops every rank: Lightning forwards its SIGTERM and broadcasts the flag
        print("\nCtrl+C: saving a checkpoint after this batch, then stopping (Ctrl+C again: stop at once, "
              "without saving)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's own graceful stop: flag now, stop at the batch boundary

    def _stop_now(self, trainer: L.Trainer) -> None:
        self._report(f"stopped at once by a second Ctrl+C at step {trainer.global_step}; no checkpoint was saved "
                     f"for it. {self._resume_hint()}")
        launcher = trainer.strategy.launcher
        if launcher is not None:  # the other DDP ranks, as Lightning does after a KeyboardInterrupt
            launcher.kill(signal.SIGKILL)
        for stream in (*(h for h in logging.getLogger().handlers if hasattr(h, "flush")), sys.stdout, sys.stderr):
            stream.flush()  # os._exit drops buffers: the message reaches the log file and the terminal
        os._exit(EXIT_CODES[signal.SIGINT])

    def _restore_sigint(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._installed = False

    # ------------------------------------------------------------ the stop
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            stop_begun()  # the save may take its time: the entry point's guard stops waiting for a batch boundary
            signum = self._signal
            detail = self._stop(trainer, "Ctrl+C" if signum == signal.SIGINT else "SIGTERM", save=True)
            exception.code = EXIT_CODES[signum]  # re-raised by Lightning: the process exits with this code
        elif isinstance(exception, KeyboardInterrupt):  # a Ctrl+C where our handler is not installed
            detail = self._stop(trainer, "Ctrl+C", save=False)
        else:
            detail = None  # an error: main() reports it; no checkpoint from a failing state
        self._restore_sigint()
        if detail is not None:
            self._report(detail)

    def _stop(self, trainer: L.Trainer, what: str, save: bool) -> str:
        """Save the checkpoint when that makes sense; the line for STATUS and the log."""
        if trainer.state.fn != TrainerFn.FITTING:
            return (f"{what} during {trainer.state.fn.value}: training had finished and its checkpoints are "
                    f"intact; test again with: python -m aigc_lab.eval run_dir={self.run_dir}")
        if trainer.sanity_checking:
            return f"{what} before the first training step (sanity check): nothing to save. {self._resume_hint()}"
        if not save:  # a KeyboardInterrupt lands anywhere, e.g. between a backward pass and its optimizer step
            return (f"{what} in the middle of step {trainer.global_step}; no checkpoint was saved for it. "
                    f"{self._resume_hint()}")
        try:  # (a second Ctrl+C meanwhile still stops at once)
            trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        except UserError as err:  # e.g. the disk is full: say so, keep the exit code of the signal
            return f"{what} at step {trainer.global_step}, but the checkpoint could not be saved: {err}"
        return (f"{what} at step {trainer.global_step}: saved {self.checkpoint_path}; resume with: "
                f"python -m aigc_lab ckpt_path={self.run_dir}")

    def _resume_hint(self) -> str:
        if self.checkpoint_path.is_file():
            return f"Resume from the last checkpoint with: python -m aigc_lab ckpt_path={self.run_dir}"
        return "No checkpoint was saved yet: start the run again"

    @rank_zero_only
    def _report(self, detail: str) -> None:
        mark_run(self.run_dir, "interrupted", detail)
        log.warning("Interrupted: %s", detail)
