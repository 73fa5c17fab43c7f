"""The FID classifier prerequisite: the same network whatever run asks for it, the asking run's random streams
untouched, precision from the same `auto` rule as the run, and its progress told in a batch job."""

from __future__ import annotations

import logging

import torch

from aigc_lab.fid_classifier import train_feature_classifier


def test_same_classifier_whatever_the_random_state(data_dir, tmp_path, caplog, single_thread):
    torch.manual_seed(1)
    before = torch.get_rng_state()
    with caplog.at_level(logging.INFO, logger="aigc_lab"):
        train_feature_classifier(str(data_dir), tmp_path / "a.pt", precision="auto", accelerator="cpu", max_epochs=1)
    assert torch.equal(torch.get_rng_state(), before)  # the asking run's stream goes on as if nothing happened
    torch.manual_seed(2)
    train_feature_classifier(str(data_dir), tmp_path / "b.pt", precision="32-true", accelerator="cpu", max_epochs=1)
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True)["state_dict"] for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    messages = [r.getMessage() for r in caplog.records]
    (start,) = [m for m in messages if m.startswith("FID feature classifier not found")]
    assert "in 1 epoch, 32-true on cpu" in start  # auto under the pinned probe
    assert any(m.startswith("FID feature classifier trained in") and "test accuracy" in m for m in messages)


def test_a_gan_run_trains_it_first_as_a_stage_with_its_own_run_dir(data_dir, tmp_path, single_thread):
    from omegaconf import OmegaConf

    from aigc_lab.fid_classifier import ensure_fid_classifier
    from aigc_lab.systems.gan import SPEC

    cached = tmp_path / "cache" / "mnist_classifier.pt"
    cfg = OmegaConf.create({"model": {"fid_features": "classifier", "classifier_path": str(cached),
                                      "data_dir": str(data_dir)},
                            "trainer": {"precision": "32-true", "accelerator": "cpu"},
                            "paths": {"log_dir": str(tmp_path / "outputs")}})
    assert SPEC.prepare == "aigc_lab.fid_classifier:ensure_fid_classifier"
    SPEC.run_prepare(cfg)  # what the launchers do before the run's own fit or test
    (run,) = (tmp_path / "outputs" / "fid_classifier" / "runs").iterdir()
    status = (run / "STATUS").read_text().splitlines()
    assert status[0] == "done" and status[1].startswith("test accuracy ") and str(cached) in status[1]
    assert "FID feature classifier trained in" in (run / "fid_classifier.log").read_text()
    assert (run / "metrics.csv").is_file() and cached.is_file()
    ensure_fid_classifier(cfg)  # cached now: nothing to do, no second run dir
    assert len(list(run.parent.iterdir())) == 1
