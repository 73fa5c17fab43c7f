"""SIGTERM and Ctrl+C (SIGINT) in every stage of a command, not only between training batches: each entry
point (``python -m aigc_lab``, ``aigc_lab.eval``, ``aigc_lab.generate``) runs under ``stops_on_signals``.

The first signal:

- outside Lightning's loops (config checks, data preparation and tokenization, setup, loading a checkpoint,
  sampling, writing) the handler installed here raises ``Interrupted`` in the main thread. It unwinds like
  any exception (a ``BaseException``: no ``except Exception`` swallows it, Lightning hands it to its callbacks
  and re-raises it), and the entry point marks the run ``interrupted`` (training), says in one line which
  stage was stopped and how to go on, and exits with 143 (SIGTERM) or 130 (Ctrl+C);
- inside Lightning's loops (training, sanity check, validation, test) Lightning's own SIGTERM handler, which
  calls this one after its own, stops at the next batch boundary, and the ``preemption`` callback saves and
  reports (callbacks/preemption.py); the first Ctrl+C is routed there too. Here a clock starts: a batch that
  has not ended ``AIGC_SIGNAL_GRACE_S`` seconds (default 5) after the signal is stopped where it is
  (``Interrupted`` raised in the main thread), without a checkpoint for it.

Python runs signal handlers between bytecodes of the main thread, so while that thread is inside one long
native operation (a huge matmul, the tokenizers library training on a big corpus) no handler runs. The C-level
handler still writes each signal's number to a pipe (``signal.set_wakeup_fd``), which a daemon thread reads
(torch and tokenizers release the GIL while they compute, so that thread runs):

- a second signal of the same kind stops at once: the run marked ``interrupted`` ("stopped at once by a
  second SIGTERM during ..."), the other DDP ranks killed, then ``os._exit`` with 143 or 130, without any
  cleanup (checkpoints are written atomically: the last one stays whole);
- a first signal still not acted on ``UNWIND_S`` seconds after the grace (the main thread stuck in native
  code) stops the same way, so that every signal is honoured within 10 s.

Signals are counted per kind because a terminal's Ctrl+C reaches every DDP rank and rank zero then forwards
SIGTERM to the ranks it started: one key press is one Ctrl+C and one SIGTERM there, not two of a kind. Under DDP
every process installs the guard (in its main thread); ranks other than zero mark and print nothing. Forked
children (DataLoader workers) drop it: their parent's handlers back and no wakeup pipe, whose bytes would
otherwise count as the parent's signals.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import select
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

log = logging.getLogger("aigc_lab")

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + the signal, as a shell reports a process killed by it
NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl+C"}
GRACE_S = 5.0  # the wait for Lightning's batch boundary (AIGC_SIGNAL_GRACE_S)
UNWIND_S = 3.0  # then the wait for the main thread to act on the signal, before the stop without cleanup
EXIT_FLUSH_S = 1.0  # the most a stop without cleanup spends on its message

F = TypeVar("F", bound=Callable[..., Any])


class Interrupted(BaseException):
    """A signal stopped the command where it was. ``signum`` and ``stage``: None when the clock raised it."""

    def __init__(self, signum: int | None = None, stage: Stage | None = None) -> None:
        super().__init__(signum, stage)
        self.signum, self.stage = signum, stage


@dataclass(frozen=True)
class Stage:
    """Where the main thread was: ``label`` for messages; ``testing``: a test or validation after training."""

    label: str
    testing: bool = False


# (module prefix, function name or None for any, stage): the first rule that a frame of the main thread matches
# names the stage, so the specific rules come first (tokenization inside data preparation, the FID classifier's
# own training loop inside the GAN's setup).
RULES = (
    ("aigc_lab.train", "check_resume", "the checks of the resumed command"),
    ("aigc_lab.data.tokenizer", "load_or_train_tokenizer", "tokenizer training (data preparation)"),
    ("aigc_lab.data", "_token_ids", "tokenization (data preparation)"),
    ("aigc_lab.data.parallel", "encode_texts", "tokenization (data preparation)"),
    ("aigc_lab.fid_classifier", None, "training of the FID feature classifier (a prerequisite stage)"),
    ("aigc_lab", "prepare_data", "data preparation"),
    ("aigc_lab", "setup", "setup"),
    ("lightning.pytorch.trainer.connectors.checkpoint_connector", None, "restoring the checkpoint"),
    ("aigc_lab.eval", "load_run_config", "loading the run's config"),
    ("aigc_lab.sample", "sample_chunks", "sampling"),
    ("aigc_lab.sample", "stream_npy", "writing the samples"),
    ("aigc_lab.sample", "write_grid", "writing the samples"),
    ("aigc_lab.translate", None, "translation"),
    ("aigc_lab.fill_mask", None, "fill-mask prediction"),
    ("aigc_lab.checkpoints", "load_checkpoint", "loading the checkpoint"),
)


def describe(frame: FrameType | None) -> Stage:
    """The stage of the stack that ends in ``frame`` (the main thread's innermost frame)."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    for module, function, label in RULES:
        if any(_in(f, module, function) for f in frames):
            return Stage(label)
    trainer = _trainer_in(frames)
    if trainer is not None:
        return _lightning_stage(trainer)
    for f in frames:
        name = _module(f)
        if name.startswith("aigc_lab") and name != __name__:
            return Stage(f"{f.f_code.co_qualname} ({name})")
    return Stage("startup")


def _module(frame: FrameType) -> str:
    """The module a frame runs in, by its import name also when it runs as ``__main__`` (``python -m``)."""
    spec = frame.f_globals.get("__spec__")
    return getattr(spec, "name", None) or frame.f_globals.get("__name__", "")


def _in(frame: FrameType, module: str, function: str | None) -> bool:
    return _module(frame).startswith(module) and (function is None or frame.f_code.co_name == function)


def _trainer_in(frames: list[FrameType]) -> Any:
    """The outermost Lightning Trainer running in these frames (the run's, not a helper's inside it), or None."""
    for frame in reversed(frames):
        if _module(frame) == "lightning.pytorch.trainer.trainer":
            trainer = frame.f_locals.get("self")
            if hasattr(trainer, "state") and hasattr(trainer, "global_step"):
                return trainer
    return None


def _lightning_stage(trainer: Any) -> Stage:
    fn = getattr(trainer.state.fn, "value", None)  # fit | validate | test | predict
    stage = getattr(trainer.state.stage, "value", None)  # train | sanity_check | validate | test | predict
    step = trainer.global_step
    if stage == "sanity_check":
        return Stage("the sanity check (validation before the first training step)")
    if fn == "fit":
        if stage == "validate":
            return Stage(f"validation at step {step}")
        return Stage("the first training step" if step == 0 else f"training at step {step}")
    if fn in ("test", "validate"):
        return Stage("test" if fn == "test" else "validation", testing=True)
    return Stage(fn or "the trainer")


def grace_s() -> float:
    """``AIGC_SIGNAL_GRACE_S`` (seconds to wait for a batch boundary), else ``GRACE_S``."""
    value = os.environ.get("AIGC_SIGNAL_GRACE_S", "").strip()
    try:
        return max(0.0, float(value)) if value else GRACE_S
    except ValueError:
        log.warning("AIGC_SIGNAL_GRACE_S=%r is not a number of seconds: using %g", value, GRACE_S)
        return GRACE_S


class Guard:
    """The handlers, the wakeup pipe and its reader thread of one command (``entry``: train, eval, generate)."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        self.grace = grace_s()
        self.pid = os.getpid()
        self.counts: Counter[int] = Counter()  # signals seen by the reader thread, per kind
        self.first: int | None = None  # the first of them, and when (time.monotonic)
        self.first_at: float | None = None
        self.deferred = False  # the handler left the stop to Lightning's loop (a batch boundary)
        self.raised = False  # Interrupted was raised in the main thread (by the handler or the clock)
        self.begun = False  # a stop that may take its time is under way (a checkpoint save, the report): no clock
        self.escalated: Stage | None = None  # where the main thread was when the clock raised Interrupted
        self._handler = self._on_signal  # one bound method, compared by identity
        self._previous: dict[int, Any] = {}
        self._wakeup_before = -1
        self._read_fd = self._write_fd = -1
        self._exiting = False
        self._clock = threading.Lock()  # between the clock's Interrupted and stop_clock

    # ------------------------------------------------------------ installing
    def install(self) -> None:
        """In the main thread only (Python runs handlers there, and only it may set them)."""
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # the C-level handler must never block
        self._wakeup_before = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handler)
        threading.Thread(target=self._watch, name="aigc-signal-watch", daemon=True).start()

    def uninstall(self) -> None:
        self._restore()
        os.close(self._write_fd)  # the reader thread reads end-of-file and ends

    def drop_in_child(self) -> None:
        """In a forked child: the parent's handlers back, no wakeup pipe (the reader thread did not fork)."""
        with contextlib.suppress(ValueError):  # not the main thread: nothing to restore from here
            self._restore()
        os.close(self._write_fd)
        os.close(self._read_fd)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) is self._handler:
                signal.signal(signum, previous)
        signal.set_wakeup_fd(self._wakeup_before)

    # ------------------------------------------------------------ the first signal, in the main thread
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid or self.raised or self.begun:
            return  # a forked child before it dropped the guard; a stop already under way
        if signal.getsignal(signum) is not self._handler:
            self.deferred = True
            return  # called by Lightning's handler: its loop stops at the next batch boundary (the clock: _watch)
        self.raised = True
        raise Interrupted(signum, describe(frame))

    # ------------------------------------------------------------ the reader thread: counts and the clock
    def _watch(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._read_fd], [], [], self._until_deadline())
                if not ready:
                    self._on_deadline()
                    continue
                data = os.read(self._read_fd, 64)
                if not data:
                    return  # uninstalled
                for signum in data:  # one byte per signal, its number
                    self._count(signum)
        finally:
            os.close(self._read_fd)

    def _count(self, signum: int) -> None:
        if signum not in EXIT_CODES:
            return  # e.g. SIGCHLD of DataLoader workers: another handler's business
        self.counts[signum] += 1
        if self.first is None:
            self.first, self.first_at = signum, time.monotonic()
        if self.counts[signum] >= 2:
            self.stop_now(f"stopped at once by a second {NAMES[signum]}", ", without saving", EXIT_CODES[signum])

    def _until_deadline(self) -> float | None:
        if self.first_at is None or self.begun:
            return None
        deadline = self.first_at + self.grace + (UNWIND_S if self.raised else 0.0)
        return max(0.0, deadline - time.monotonic())

    def _on_deadline(self) -> None:
        if self.first_at is None or self.begun:
            return
        waited = time.monotonic() - self.first_at
        if not self.raised and waited >= self.grace:
            self._raise_in_main_thread()
        elif self.raised and waited >= self.grace + UNWIND_S:
            self.stop_now(NAMES[self.first], f", still running {waited:.0f} s later (inside a long native "
                          f"operation?): stopped without cleanup", EXIT_CODES[self.first])

    def _raise_in_main_thread(self) -> None:
        """``Interrupted`` in the main thread at its next bytecode (a batch that did not reach its boundary)."""
        main = threading.main_thread()
        stage = describe(sys._current_frames().get(main.ident))
        with self._clock:
            if self.begun or self.raised:
                return
            self.escalated, self.raised = stage, True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(main.ident), ctypes.py_object(Interrupted))

    def stop_clock(self) -> None:
        """In the main thread: a stop is under way (a checkpoint save, the entry point's report), which the clock
        must not interrupt; an ``Interrupted`` it sent and Python has not raised yet is dropped."""
        with self._clock:
            self.begun = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.main_thread().ident), None)

    # ------------------------------------------------------------ stopping
    def stop_now(self, head: str, tail: str, code: int) -> None:
        """Mark, say ("<head> during <stage><tail>. <hint>") and exit with ``code`` at once, whatever the main
        thread is doing (no cleanup)."""
        if self._exiting:
            return
        self._exiting = True
        frame = sys._current_frames().get(threading.main_thread().ident)
        stage = describe(frame)
        detail = f"{head} during {stage.label}{tail}. {self.hint(stage)}"
        _kill_other_ranks(frame)
        timer = threading.Timer(EXIT_FLUSH_S, os._exit, (code,))  # if the message blocks (a held lock)
        timer.daemon = True
        timer.start()
        self._report(detail)
        for stream in (*(h for h in logging.getLogger().handlers if hasattr(h, "flush")), sys.stdout, sys.stderr):
            stream.flush()  # os._exit drops buffers
        os._exit(code)

    def report_interrupted(self, err: Interrupted) -> int:
        """The line and the run's STATUS for an ``Interrupted`` that reached the entry point; the exit code."""
        signum = err.signum or self.first or signal.SIGTERM
        stage = err.stage or self.escalated or Stage("startup")
        where = f"{NAMES[signum]} during {stage.label}"
        if err.signum is None and self.deferred:  # the clock raised it in a Lightning loop
            where += f", stopped mid-batch (no batch boundary within {self.grace:g} s of the signal)"
        _kill_other_ranks(_innermost_frame(err))  # mid-batch, they would wait for this rank in a collective
        self._report(f"{where}. {self.hint(stage)}")
        return EXIT_CODES[signum]

    def report_lightning_stop(self, err: SystemExit) -> None:
        """Lightning's stop at a batch boundary (``SIGTERMException``) exits with code 0 when no callback set
        one (``eval`` has none): the exit code of the signal and one line instead."""
        if err.code or type(err).__name__ != "SIGTERMException":
            return
        signum = self.first or signal.SIGTERM
        err.code = EXIT_CODES[signum]
        stage = describe(_innermost_frame(err))
        self._report(f"{NAMES[signum]} during {stage.label}. {self.hint(stage)}")

    def hint(self, stage: Stage) -> str:
        """How to go on after a stop in ``stage``."""
        if self.entry == "eval":
            return "Nothing was written: evaluate again with the same command"
        if self.entry in ("generate", "export"):
            return "Its output may be missing or incomplete: run the same command again"
        from aigc_lab.utils.run_info import current_run

        run_dir = current_run()
        if run_dir is None:  # before Hydra's job (the checks of a resume, composing the config)
            return "Nothing was written: run the same command again"
        if stage.testing:
            return (f"Training had finished and its checkpoints are intact; test again with: "
                    f"python -m aigc_lab.eval run_dir={run_dir}")
        if any((run_dir / "checkpoints").glob("*.ckpt")):
            return f"Resume from the last checkpoint with: python -m aigc_lab ckpt_path={run_dir}"
        return "No checkpoint was saved yet: start the run again"

    def _report(self, detail: str) -> None:
        from aigc_lab.utils.run_info import current_run, mark_run

        run_dir = current_run()
        if run_dir is not None and _status(run_dir) == "running":  # else the run said why it ended itself
            mark_run(run_dir, "interrupted", detail)
        if _rank() != 0:
            return
        if logging.getLogger().handlers:  # a Hydra job: to the console and the run's log file
            log.warning("Interrupted: %s", detail)
        else:
            print(f"\nInterrupted: {detail}", file=sys.stderr, flush=True)


def _status(run_dir: Path) -> str:
    try:
        return (run_dir / "STATUS").read_text().split("\n", 1)[0]
    except OSError:
        return ""


def _rank() -> int:
    if "lightning.pytorch" in sys.modules:
        from lightning.pytorch.utilities import rank_zero_only

        return getattr(rank_zero_only, "rank", 0)
    return 0


def _innermost_frame(err: BaseException) -> FrameType | None:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame if tb is not None else None


def _kill_other_ranks(frame: FrameType | None) -> None:
    """Kill the DDP ranks this process started, as Lightning does after a KeyboardInterrupt."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    trainer = _trainer_in(frames)
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if launcher is not None:
        launcher.kill(signal.SIGKILL)


# ---------------------------------------------------------------- the process's guard
_GUARD: Guard | None = None


def active_guard() -> Guard | None:
    """The guard of this process, or None (not under an entry point, e.g. in a test, or in a forked child)."""
    return _GUARD if _GUARD is not None and _GUARD.pid == os.getpid() else None


def stop_begun() -> None:
    """A stop that may take its time has begun (the preemption callback saving a checkpoint): no clock now."""
    guard = active_guard()
    if guard is not None:
        guard.stop_clock()


def _drop_in_child() -> None:
    global _GUARD
    guard, _GUARD = _GUARD, None
    if guard is not None:
        guard.drop_in_child()


os.register_at_fork(after_in_child=_drop_in_child)


def _stop_clock(guard: Guard) -> None:
    """``guard.stop_clock()``, absorbing the clock's ``Interrupted`` if it lands first (it is sent at most once)."""
    while True:
        try:
            guard.stop_clock()
            return
        except Interrupted:
            continue


def stops_on_signals(entry: str) -> Callable[[F], F]:
    """Run the decorated entry point (``entry``: train, eval, generate or export) under a ``Guard``: see the
    module."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            global _GUARD
            if active_guard() is not None or threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)
            guard = _GUARD = Guard(entry)
            guard.install()
            try:
                return fn(*args, **kwargs)
            except Interrupted as err:
                _stop_clock(guard)
                raise SystemExit(guard.report_interrupted(err)) from None
            except SystemExit as err:
                _stop_clock(guard)
                guard.report_lightning_stop(err)
                raise
            finally:
                _stop_clock(guard)
                guard.uninstall()
                _GUARD = None

        return run  # type: ignore[return-value]

    return decorate
