"""Adding a system takes one system file, one model file and their conf files (README, "Add a system"): the
per-pixel Gaussian of tests/fourth_system/, which the package knows nothing of, trains, tests, resumes, is
evaluated, samples through ``generate`` and runs in a 2-trial sweep, with the launchers reading its spec."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch
from conftest import run_dirs
from runs import ENV, GAN, status

from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint

FOURTH = Path(__file__).parent / "fourth_system"
ARGS = ("experiment=pixel_mnist", f"hydra.searchpath=[file://{FOURTH / 'conf'}]")


def fourth_env() -> dict[str, str]:
    """The system's modules importable, as a user's own package would be."""
    return {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(FOURTH), os.environ.get("PYTHONPATH")]))}


def test_a_fourth_system_trains_evaluates_generates_and_sweeps(run_cli, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FOURTH))  # its checkpoints hold its config class, as any system's do
    env = fourth_env()
    run_cli(*ARGS, env=env)
    (run,) = run_dirs(tmp_path, "pixel_mnist")
    assert status(run) == "done"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/nll"] < metrics["train/nll"] + 1.0  # a number, finite and of the right scale
    ckpt = load_checkpoint(resolve_checkpoint(run))
    assert ckpt["aigc_system"] == "pixel_system:PixelGaussianSystem"
    assert ckpt["pixel_gaussian_config"] == {"num_classes": 10, "image_channels": 1, "image_size": 28}

    # a resume continues the run (its spec names its checkpoint key: the pairing check accepts it)
    run_cli(f"ckpt_path={run}", "trainer.max_epochs=2", env=env)
    assert status(run) == "done" and len(run_dirs(tmp_path, "pixel_mnist")) == 1

    proc = run_cli(f"run_dir={run}", module="aigc_lab.eval", env=env)
    (report,) = run.glob("eval_*.json")
    assert "test/nll" in json.loads(report.read_text())["metrics"], proc.stdout

    out = tmp_path / "pixels.pt"
    run_cli(f"ckpt_path={run}", "num_samples=6", f"out={out}", module="aigc_lab.generate", env=env)
    images = torch.load(out)
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.uint8

    run_cli("-m", *ARGS, "model.lr=1e-2,1e-1", env=env)
    (sweep,) = (tmp_path / "outputs" / "pixel_mnist" / "multiruns").glob("*")
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["status"] for row in rows] == ["done", "done"]


def test_its_checkpoints_are_told_apart_from_the_other_systems(run_cli, tmp_path):
    env = fourth_env()
    run_cli(*ARGS, env=env)
    (run,) = run_dirs(tmp_path, "pixel_mnist")
    proc = run_cli(*GAN, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", env=env, check=False)
    assert proc.returncode == 1
    assert "is a checkpoint of a per-pixel Gaussian (experiment=pixel_mnist), not of this run's GANSystem" in (
        proc.stdout + proc.stderr)
