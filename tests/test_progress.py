"""The progress display: Rich in a terminal, a log line every N steps in a batch job (stdout not a terminal)."""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from aigc_lab.callbacks.progress import LogProgress, progress_bar
from aigc_lab.models.classifier import ClassifierConfig
from aigc_lab.systems.classifier import ClassifierSystem


def test_choice_follows_the_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert isinstance(progress_bar(every_n_steps=7), LogProgress) and progress_bar(every_n_steps=7).every_n_steps == 7
    assert isinstance(progress_bar(force="rich"), RichProgressBar)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert isinstance(progress_bar(), RichProgressBar) and isinstance(progress_bar(force="log"), LogProgress)


def test_log_lines_every_n_steps(caplog, single_thread):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g))
    system = ClassifierSystem(ClassifierConfig(width=4, feature_dim=8), partial(torch.optim.AdamW, lr=1e-2))
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[LogProgress(every_n_steps=2)])
    with caplog.at_level(logging.INFO, logger="aigc_lab"):
        trainer.fit(system, DataLoader(data, batch_size=8))
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert [line.split(" |")[0] for line in lines] == ["epoch 0 step 2/6", "epoch 0 step 4/6", "epoch 0 step 6/6"]
    assert all("train/loss" in line for line in lines)
    assert all(" | eta " in line for line in lines) and lines[-1].split(" | eta ")[1].startswith("0s")
