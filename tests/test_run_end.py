"""How a run ends: its exit code agrees with its STATUS (a diverged run fails, a run that has no optimized metric
is done unless it is a sweep trial), and its best checkpoint has a finite monitored metric, or is the latest one
when the monitored metric is never logged (aigc_lab.callbacks.ModelCheckpoint)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel
from runs import ENV, GAN, SEQ2SEQ, mlm, status

from aigc_lab.callbacks import ModelCheckpoint

NAN = float("nan")


def run_dir(tmp_path: Path) -> Path:
    (run,) = sorted((tmp_path / "outputs").glob("*/runs/*"))
    return run


def top_k_files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")


def lines_with(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(w in line for w in words)]


# ---------------------------------------------------------------- the checkpoint callback, in process
class Scripted(BoringModel):
    """Logs ``val/x`` = values[epoch] at each validation, or nothing when ``values`` is None."""

    def __init__(self, values: list[float] | None) -> None:
        super().__init__()
        self.values = values

    def on_validation_epoch_end(self) -> None:
        if self.values is not None:
            self.log("val/x", self.values[self.current_epoch])


def fit(tmp_path: Path, values: list[float] | None, epochs: int, save_top_k: int = 1) -> ModelCheckpoint:
    callback = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="epoch_{epoch}", monitor="val/x",
                               mode="min", save_top_k=save_top_k, auto_insert_metric_name=False)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=2, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(Scripted(values))
    return callback


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aigc_lab" and r.levelno == logging.WARNING]


def test_a_nonfinite_metric_is_never_the_best(tmp_path, single_thread, caplog):
    with caplog.at_level(logging.WARNING, logger="aigc_lab"):
        callback = fit(tmp_path, [2.0, NAN, math.inf, 1.0], epochs=4, save_top_k=3)
    # Lightning alone keeps a NaN or inf epoch (scored inf) while it holds fewer than save_top_k checkpoints
    assert sorted(Path(p).name for p in callback.best_k_models) == ["epoch_0.ckpt", "epoch_3.ckpt"]
    assert Path(callback.best_model_path).name == "epoch_3.ckpt" and float(callback.best_model_score) == 1.0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0.ckpt", "epoch_3.ckpt"]
    (warning,) = warnings_of(caplog)  # once, not at every validation
    assert "'val/x' is nan at step 4" in warning and "no best checkpoint" in warning


def test_an_all_nan_run_has_no_best_checkpoint(tmp_path, single_thread):
    callback = fit(tmp_path, [NAN, NAN], epochs=2)
    assert callback.best_model_path == "" and callback.best_model_score is None
    assert list((tmp_path / "checkpoints").glob("*")) == []


def test_a_monitor_never_logged_keeps_the_latest_checkpoint(tmp_path, single_thread, caplog):
    with caplog.at_level(logging.WARNING, logger="aigc_lab"):
        callback = fit(tmp_path, None, epochs=3)  # Lightning: MisconfigurationException at the first validation
    assert Path(callback.best_model_path).name == "epoch_2.ckpt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_2.ckpt"]
    (warning,) = warnings_of(caplog)
    assert "'val/x' is not logged" in warning and "keeping the latest checkpoint" in warning


# ---------------------------------------------------------------- through the command line
def test_diverged_run_exits_1_with_one_line_and_no_nan_best(run_cli, text_corpus, tmp_path):
    proc = run_cli(*mlm(text_corpus), "model.lr=1e12", "trainer.gradient_clip_val=null", "model.nonfinite_loss=skip",
                   "print_config=false", env=ENV, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    run = run_dir(tmp_path)
    assert status(run) == "failed" and "diverged: val/perplexity = nan" in (run / "STATUS").read_text()
    (line,) = lines_with(proc.stderr, "error: diverged: val/perplexity = nan")
    assert str(run) in line and "Traceback" not in out
    assert top_k_files(run) == [] and (run / "checkpoints" / "last.ckpt").is_file()


def test_gan_without_fid_keeps_the_latest_checkpoint(run_cli, tmp_path):
    # the experiment's own monitor and optimized metric, val/fid, which fid_features=none never logs
    gan = [o for o in GAN if not o.startswith(("callbacks.model_checkpoint.monitor=", "optimized_metric="))]
    proc = run_cli(*gan, "print_config=false", env=ENV)
    out = proc.stdout + proc.stderr
    assert len(lines_with(out, "checkpoint monitor 'val/fid' is not logged", "keeping the latest checkpoint")) == 1
    assert "Traceback" not in out and "MisconfigurationException" not in out
    run = run_dir(tmp_path)
    assert status(run) == "done" and len(top_k_files(run)) == 1
    assert "No best checkpoint was saved" not in out  # the test stage used the kept checkpoint


def test_run_without_validation_is_done_with_one_warning(run_cli, tmp_path):
    proc = run_cli(*SEQ2SEQ, "trainer.limit_val_batches=0", "print_config=false", env=ENV)
    out = proc.stdout + proc.stderr
    (warning,) = lines_with(out, "optimized_metric 'val/exact_match' was not logged")
    assert "no optimized value" in warning and "error:" not in out
    run = run_dir(tmp_path)
    assert status(run) == "done" and len(top_k_files(run)) == 1  # the latest weights, tested


def test_sweep_trial_without_validation_fails(run_cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *SEQ2SEQ, "trainer.limit_val_batches=0", "print_config=false", f"hydra.sweep.dir={sweep}",
                   env=ENV)  # exit 0: the sweep itself finished
    job = sweep / "0"
    assert status(job) == "failed", proc.stdout[-2000:]
    assert "optimized_metric 'val/exact_match' was not logged" in (job / "STATUS").read_text()
