"""Faults a run survives: SIGTERM and Ctrl+C during training (a resumable checkpoint, a clean exit,
then resumed to the planned end), a kill -9 while a checkpoint is written (the previous one survives), NaN/inf
losses (skipped and counted, or a stop that keeps the last good checkpoint), a full disk and a removed run dir.

The CLI test runs the real command in a subprocess and signals it from outside; the rest run tiny systems
in-process (Lightning's SIGTERM handling is the same there)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import cli_fork
import lightning as L
import pytest
import torch
from conftest import run_dirs
from lightning.pytorch.callbacks import ModelCheckpoint
from runs import ENV, SEQ2SEQ, status
from torch.utils.data import DataLoader, TensorDataset

from aigc_lab.callbacks import Preemption
from aigc_lab.checkpoint_io import AtomicCheckpointIO, atomic_save
from aigc_lab.checkpoints import last_checkpoint
from aigc_lab.errors import UserError
from aigc_lab.models.classifier import ClassifierConfig
from aigc_lab.models.gan import GANConfig
from aigc_lab.systems.classifier import ClassifierSystem
from aigc_lab.systems.gan import GANSystem
from aigc_lab.systems.guards import NonFiniteLossError

TESTS = Path(__file__).parent


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def child_env(tmp_path: Path, data_dir: Path, cache_dir: Path) -> dict[str, str]:
    """The environment of run_cli, with tests/ importable (for mark_training.py) before what PYTHONPATH holds."""
    return {**os.environ, **ENV, "AIGC_DATA_DIR": str(data_dir), "AIGC_CACHE_DIR": str(cache_dir),
            "PROJECT_ROOT": str(tmp_path), "PYTHONPATH": os.pathsep.join(filter(None, [
                str(TESTS), os.environ.get("PYTHONPATH")]))}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode} before training started"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.05)


# ---------------------------------------------------------------- SIGTERM through the CLI
def test_sigterm_saves_checkpoint_exits_cleanly_and_resumes_to_the_planned_end(data_dir, cache_dir, tmp_path):
    max_steps = 24
    args = (*SEQ2SEQ, "trainer.max_epochs=-1", f"trainer.max_steps={max_steps}", "trainer.limit_train_batches=8",
            "test=false", "print_config=false", "+callbacks.mark._target_=mark_training.MarkTraining")
    env = child_env(tmp_path, data_dir, cache_dir)
    marker, out, err = tmp_path / "training", tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:  # files, not pipes: a full pipe would block the run
        proc = subprocess.Popen([sys.executable, "-m", "aigc_lab", *args], cwd=tmp_path, stdout=stdout,
                                stderr=stderr, env={**env, "MARK_AT_STEP": "3", "MARK_FILE": str(marker)})
        try:
            wait_for(marker, proc, timeout=300)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=300)
        finally:
            proc.kill()
    text = out.read_text() + err.read_text()
    assert proc.returncode == 143, text[-4000:]
    (run,) = run_dirs(tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    step = load(ckpt)["global_step"]
    assert 3 <= step < max_steps
    assert f"SIGTERM at step {step}: saved {ckpt}; resume with: python -m aigc_lab ckpt_path={run}" in text
    assert "Traceback" not in text
    assert status(run) == "interrupted"

    # Resumed with the run dir alone: its overrides come back from .hydra/overrides.yaml (MarkTraining does
    # nothing now: no MARK_AT_STEP), and it ends where the uninterrupted run would.
    proc = cli_fork.run("aigc_lab", [f"ckpt_path={run}"], env, tmp_path, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert load(ckpt)["global_step"] == max_steps
    assert status(run) == "done" and len(run_dirs(tmp_path)) == 1


# ---------------------------------------------------------------- Ctrl+C and SIGTERM in-process (the GAN)
def tiny_gan(nonfinite_loss: str = "stop") -> GANSystem:
    adam = partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))
    return GANSystem(GANConfig(latent_dim=8, g_width=4, d_width=4), adam, adam, ema_decay=0.9, fid_features="none",
                     nonfinite_loss=nonfinite_loss)


def tiny_classifier(nonfinite_loss: str = "stop") -> ClassifierSystem:
    return ClassifierSystem(ClassifierConfig(width=4, feature_dim=8), partial(torch.optim.AdamW, lr=1e-2),
                            nonfinite_loss=nonfinite_loss)


def digits(n: int = 64, batch_size: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(n, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def trainer(run_dir: Path, max_steps: int, *callbacks: L.Callback, every_step: bool = True) -> L.Trainer:
    """A quiet CPU trainer whose checkpoints go through AtomicCheckpointIO into ``run_dir/checkpoints``."""
    saving = [ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None,
                              every_n_train_steps=1, enable_version_counter=False)] if every_step else []
    return L.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     default_root_dir=run_dir, plugins=[AtomicCheckpointIO()], callbacks=[*saving, *callbacks],
                     enable_checkpointing=every_step)


class SignalAt(L.Callback):
    """Sends ``signals`` to this process after training step ``step``, as a user or a scheduler would."""

    def __init__(self, step: int, *signals: int) -> None:
        self.step, self.signals = step, signals

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            for signum in self.signals:
                os.kill(os.getpid(), signum)


def test_ctrl_c_stops_the_gan_at_a_batch_boundary_and_resumes(tmp_path, single_thread):
    sigint_before = signal.getsignal(signal.SIGINT)
    preemption = Preemption(str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        trainer(tmp_path, 8, preemption, SignalAt(3, signal.SIGINT), every_step=False).fit(tiny_gan(), digits())
    assert stop.value.code == 130
    assert signal.getsignal(signal.SIGINT) is sigint_before  # Ctrl+C is Python's again
    ckpt = load(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3 and len(ckpt["optimizer_states"]) == 2
    assert status(tmp_path) == "interrupted"
    assert f"Ctrl+C at step 3: saved {tmp_path / 'checkpoints' / 'last.ckpt'}" in (tmp_path / "STATUS").read_text()

    resumed = trainer(tmp_path, 8, Preemption(str(tmp_path)), every_step=False)
    resumed.fit(tiny_gan(), digits(), ckpt_path=tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed.global_step == 8


class ForcedExit(BaseException):
    """What ``os._exit`` does in a real run (end the process at once), made catchable for an in-process test."""


def test_sigterm_exit_code_and_a_second_ctrl_c_stops_at_once(tmp_path, single_thread, monkeypatch):
    sigint_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        trainer(tmp_path, 8, Preemption(str(tmp_path)), SignalAt(2, signal.SIGTERM), every_step=False).fit(
            tiny_classifier(), digits())
    assert stop.value.code == 143
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert "SIGTERM at step 2" in (tmp_path / "STATUS").read_text()

    # Two Ctrl+C in a row: the second one does not wait for the batch to end (os._exit), and nothing is saved.
    def exit_now(code: int) -> None:
        raise ForcedExit(code)

    monkeypatch.setattr(os, "_exit", exit_now)
    other = tmp_path / "other"
    other.mkdir()  # a run dir exists before training (Hydra makes it)
    with pytest.raises(ForcedExit) as stop:
        trainer(other, 8, Preemption(str(other)), SignalAt(2, signal.SIGINT, signal.SIGINT), every_step=False).fit(
            tiny_classifier(), digits())
    assert stop.value.args == (130,)
    assert status(other) == "interrupted"
    assert "stopped at once by a second Ctrl+C at step 2" in (other / "STATUS").read_text()
    assert not (other / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is sigint_before


# ---------------------------------------------------------------- kill -9 while writing a checkpoint
WRITER = """
import sys, torch
from pathlib import Path
from aigc_lab.checkpoint_io import AtomicCheckpointIO

io, path = AtomicCheckpointIO(), Path(sys.argv[1])
io.save_checkpoint({"state_dict": {"w": torch.arange(10.0)}, "global_step": 1}, path)
print("saved", flush=True)
big = {"state_dict": {f"w{i}": torch.ones(4_000_000) for i in range(16)}, "global_step": 2}  # 256 MB
io.save_checkpoint(big, path)
print("replaced", flush=True)
"""


def test_kill_9_while_writing_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    path = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    try:
        assert proc.stdout.readline().strip() == "saved"
        deadline = time.monotonic() + 120
        while not (temps := list(path.parent.glob(".last.ckpt.*.tmp"))):
            assert proc.poll() is None and time.monotonic() < deadline, "the big write never started"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)  # mid-write: the temp file exists, the rename has not happened
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert "replaced" not in proc.stdout.read()
    survivor = load(path)
    assert survivor["global_step"] == 1 and torch.equal(survivor["state_dict"]["w"], torch.arange(10.0))
    assert temps[0].exists()  # left behind by the killed writer, and never taken for a checkpoint:
    assert last_checkpoint(run) == path and sorted(path.parent.glob("*.ckpt")) == [path]
    atomic_save({"state_dict": {}}, path.parent / "next.ckpt")  # the next save clears the dead writer's temp
    assert not temps[0].exists()


# ---------------------------------------------------------------- NaN / inf losses
class PoisonAt(L.Callback):
    """Makes ``module``'s output NaN during the batch that starts at ``global_step == step`` (once), and records
    the parameters before that batch and after it."""

    def __init__(self, step: int, module: str) -> None:
        self.step, self.module, self.handle, self.before, self.after = step, module, None, None, None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step and self.before is None:
            self.before = {k: v.detach().clone() for k, v in pl_module.named_parameters()}
            module = getattr(pl_module, self.module)
            self.handle = module.register_forward_hook(lambda mod, inputs, out: out * float("nan"))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
            self.after = {k: v.detach().clone() for k, v in pl_module.named_parameters()}


SYSTEMS = {  # name: (system factory, the module whose output is poisoned, skipped steps per poisoned batch)
    "classifier": (tiny_classifier, "net", 1),  # automatic optimization: one loss, one step
    "gan": (tiny_gan, "discriminator", 2),  # manual optimization: D's and G's losses are both NaN, both skipped
}


@pytest.mark.parametrize("name", SYSTEMS)
def test_nonfinite_loss_skip_counts_and_trains_on(name, tmp_path, single_thread):
    make, module, skipped = SYSTEMS[name]
    poison = PoisonAt(2, module)
    system = make("skip")
    fit = trainer(tmp_path, 6, poison)
    fit.fit(system, digits())
    assert system.nonfinite_steps == skipped
    assert fit.callback_metrics["train/nonfinite_steps"] == skipped
    assert fit.global_step == 6  # the planned end (the GAN took one batch more: a skipped G step is no step)
    for key, value in poison.after.items():  # the poisoned batch changed no weight
        assert torch.equal(value, poison.before[key]), key
    assert all(torch.isfinite(p).all() for p in system.parameters())
    assert load(tmp_path / "checkpoints" / "last.ckpt")["nonfinite_steps"] == skipped  # kept for a resume


@pytest.mark.parametrize("name", SYSTEMS)
def test_nonfinite_loss_stop_names_the_step_and_keeps_the_last_good_checkpoint(name, tmp_path, single_thread):
    make, module, _ = SYSTEMS[name]
    elsewhere = tmp_path / "preemption"  # the preemption callback must save nothing on this error
    with pytest.raises(NonFiniteLossError) as stop:
        trainer(tmp_path, 6, PoisonAt(3, module), Preemption(str(elsewhere))).fit(make("stop"), digits())
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    message = str(stop.value)
    loss = "train/loss_d" if name == "gan" else "train/loss"
    assert message.startswith(f"{loss} is nan at step 3 (epoch 0): training stopped; the last good checkpoint, "
                              f"{ckpt}, is kept")
    assert "model.nonfinite_loss=skip" in message and "model.lr" in message
    assert ("model.clip_grad_norm" if name == "gan" else "trainer.gradient_clip_val") in message
    good = load(ckpt)
    assert good["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())
    assert not elsewhere.exists()


# ---------------------------------------------------------------- a full disk, a removed run dir
def test_disk_full_is_a_clear_error_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError) as full:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert str(full.value).startswith(f"no space left on device while writing checkpoint {path}; the previous "
                                      f"checkpoint {path} is intact")
    assert torch.equal(load(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left


def test_removed_run_dir_is_a_clear_error_not_recreated(tmp_path, single_thread):
    run = tmp_path / "run"
    run.mkdir()  # as Hydra makes it

    class RemoveRunDir(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
            if trainer.global_step == 2:
                import shutil

                shutil.rmtree(run)

    # RemoveRunDir runs before ModelCheckpoint (Lightning calls checkpoint callbacks last), so step 2's save fails.
    with pytest.raises(UserError, match=rf"cannot write checkpoint {run}/checkpoints/last.ckpt: the folder {run} "
                                        r"does not exist \(was the run dir removed"):
        trainer(run, 6, RemoveRunDir()).fit(tiny_classifier(), digits())
    assert not run.exists()
