"""The real command line, in subprocesses, on the tiny MNIST fixture."""

from __future__ import annotations

import pytest
import torch
from conftest import run_dirs

TINY_GAN = ("experiment=gan_mnist", "debug=fdr", "data.batch_size=16", "data.eval_batch_size=50",
            "model.net.g_width=8", "model.net.d_width=8")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gan_fast_dev_run(run_cli, tmp_path, precision):
    proc = run_cli(*TINY_GAN, f"trainer.precision={precision}")
    assert "CONFIG" in proc.stdout  # the printed config tree
    (run,) = run_dirs(tmp_path)
    assert (run / "STATUS").read_text().startswith("done")
    assert (run / "config_tree.log").exists() and (run / ".hydra" / "config.yaml").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2  # two batches = two generator steps
    assert "val/fid" in str(ckpt["callbacks"])  # checkpointing monitors FID


def test_generate_from_checkpoint_and_run_dir(run_cli, tmp_path):
    run_cli(*TINY_GAN)
    (run,) = run_dirs(tmp_path)
    out = tmp_path / "samples" / "digits.pt"
    proc = run_cli(f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "num_samples=12", f"out={out}",
                   module="aigc_lab.generate")
    assert "wrote (12, 1, 28, 28)" in proc.stdout
    images = torch.load(out)
    assert images.shape == (12, 1, 28, 28) and images.dtype == torch.uint8
    assert out.with_suffix(".png").stat().st_size > 0

    out7 = tmp_path / "sevens.pt"
    run_cli(f"ckpt_path={run}", "num_samples=5", f"out={out7}", "label=7", module="aigc_lab.generate")
    assert torch.load(out7).shape == (5, 1, 28, 28)


def test_classifier_experiment_exports_features(run_cli, tmp_path, cache_dir):
    run_cli("experiment=mnist_classifier", "debug=fdr", "data.batch_size=32",
            f"model.export_path={tmp_path / 'clf.pt'}")
    blob = torch.load(tmp_path / "clf.pt", weights_only=True)
    assert set(blob) == {"config", "state_dict", "test_acc"} and 0.0 <= blob["test_acc"] <= 1.0


def test_missing_data_is_one_clear_error(run_cli, tmp_path):
    empty = tmp_path / "empty"
    proc = run_cli(*TINY_GAN, "data.download=false", env={"AIGC_DATA_DIR": str(empty)}, check=False)
    assert proc.returncode == 1
    assert f"MNIST not found in {empty}/mnist/MNIST/raw" in proc.stderr
    assert "AIGC_DATA_DIR" in proc.stderr and "Traceback" not in proc.stderr
    (run,) = run_dirs(tmp_path)
    assert (run / "STATUS").read_text().startswith("failed")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.net.latent_dimm=3", "Key 'latent_dimm' is not in struct"),  # Hydra's own check
        ("+model.net.widht=3", "model.net.widht: unknown key for aigc_lab.models.gan.GANConfig"),
        ("trainer.max_epochs=abc", "trainer.max_epochs: expected"),
        ("trainer.precision=bf17", "trainer.precision: expected"),
        ("experiment=gan_mnits", "Could not find 'experiment/gan_mnits'"),
        ("model.lr=-1", "lr must be positive"),
    ],
)
def test_config_mistakes_fail_with_the_key(run_cli, override, message):
    proc = run_cli(*TINY_GAN, override, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_groups(run_cli):
    proc = run_cli("--help")
    for group in ("experiment:", "trainer:", "debug:", "logger:", "callbacks:"):
        assert group in proc.stdout
