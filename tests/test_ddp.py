"""DDP on CPU (gloo, 2 processes of 1 thread) through the real CLI, for single runs and a multirun."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_dirs
from runs import ENV, GAN, SEQ2SEQ, mlm, status

DDP = ("trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp")


def only_rank_zero_wrote(run, launches: int = 1) -> None:
    assert status(run) == "done"
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "config_tree.log").is_file()
    assert len(json.loads((run / "provenance.json").read_text())["launches"]) == launches
    events = (run / "tensorboard").glob("events.out.tfevents.*")  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert len({e.name.split(".")[-2] for e in events}) == launches  # one process a launch wrote TensorBoard


@pytest.mark.parametrize("system", ["gan", "mlm", "seq2seq"])
def test_ddp_run(run_cli, tmp_path, text_corpus, system):
    overrides = {"gan": GAN, "mlm": mlm(text_corpus), "seq2seq": SEQ2SEQ}[system]
    proc = run_cli(*overrides, *DDP, env=ENV)
    assert "unused parameters" not in proc.stderr
    (run,) = run_dirs(tmp_path)  # the second rank made no run dir of its own
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["debug"]
    only_rank_zero_wrote(run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2  # 2 batches per rank, in step


def test_ddp_multirun_keeps_one_sweep_dir(run_cli, tmp_path):
    run_cli("-m", *SEQ2SEQ, *DDP, "model.lr=0.001,0.002", env=ENV)
    (sweep,) = (tmp_path / "outputs" / "debug" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job, lr in zip(jobs, ("0.001", "0.002")):
        assert f"model.lr={lr}" in (job / ".hydra" / "overrides.yaml").read_text()
        only_rank_zero_wrote(job)
    assert not (tmp_path / "outputs" / "debug" / "runs").exists()  # no rank re-ran the sweep as single runs
