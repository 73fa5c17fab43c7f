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
