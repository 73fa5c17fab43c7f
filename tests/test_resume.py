"""Resuming into the same run through the real CLI: N steps, then resumed to 2N, equals 2N uninterrupted.

The runs resume at an epoch boundary (limit_train_batches divides N), where Lightning continues the data
order exactly; learning rates are kept constant because a schedule's length follows ``max_steps``, which
the resumed command changes on purpose.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import run_dirs
from runs import ENV, GAN, SEQ2SEQ, scalars, status

from aigc_lab.resume import prepare_argv, quote

EPOCH = 3  # training batches per epoch
N = 2 * EPOCH


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def assert_same_training(resumed, straight, loss_tags: tuple[str, ...]) -> None:
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 * N
    a, b = weights(resumed), weights(straight)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=f"{key} differs")
    for tag in loss_tags:
        # Both launches in one TensorBoard run. (From an end-of-epoch checkpoint Lightning's logging step
        # resumes one ahead, so the curves are compared in order, not by step.)
        first, second = scalars(resumed, tag), scalars(straight, tag)
        assert len(first) == len(second) == 2 * N
        first_values, second_values = (list(dict(sorted(c.items())).values()) for c in (first, second))
        assert first_values == pytest.approx(second_values, rel=1e-4, abs=1e-6), tag


def assert_resumed_in_place(tmp_path, run) -> None:
    assert len(run_dirs(tmp_path)) == 2 and status(run) == "done"  # no third run dir was made
    assert not [p for p in (run / "tensorboard").iterdir() if p.is_dir()]  # no version_1: the same run
    events = (run / "tensorboard").glob("events.out.tfevents.*")  # events.out.tfevents.<time>.<host>.<pid>.<n>
    assert len({e.name.split(".")[-2] for e in events}) == 2  # written by the two launches
    launches = json.loads((run / "provenance.json").read_text())["launches"]
    assert len(launches) == 2 and "ckpt_path=" in launches[1]["command"]
    assert any(o.startswith("ckpt_path=") and o.endswith("last.ckpt") for o in launches[1]["overrides"])


def test_seq2seq_resume_equals_uninterrupted(run_cli, tmp_path):
    base = (*SEQ2SEQ, "model.schedule=constant", "model.warmup_ratio=0", "trainer.max_epochs=-1",
            f"trainer.limit_train_batches={EPOCH}")
    run_cli(*base, f"trainer.max_steps={2 * N}", env=ENV)  # uninterrupted
    run_cli(*base, f"trainer.max_steps={N}", env=ENV)  # stopped at N
    straight, first = run_dirs(tmp_path)
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == N
    # `last` = the newest run of this task; the run's own overrides come back from its .hydra/overrides.yaml
    run_cli("ckpt_path=last", "debug=fdr", f"trainer.max_steps={2 * N}", env=ENV)
    assert_resumed_in_place(tmp_path, first)
    assert_same_training(first, straight, ("train/loss",))


def test_gan_interrupted_and_resumed_equals_uninterrupted(run_cli, tmp_path):
    # Interrupted at N of 2N steps (same config, so the same learning-rate schedule), then resumed. The GAN
    # draws noise, labels and its data order from the global RNG: equality needs the RNG states restored.
    base = (*GAN, "trainer.precision=32-true", "model.channels_last=false", "trainer.max_epochs=-1",
            f"trainer.limit_train_batches={EPOCH}", f"trainer.max_steps={2 * N}",
            "+callbacks.stop._target_=stop_at.StopAt")
    # where stop_at.py is, before what PYTHONPATH holds (e.g. the source tree under test)
    tests = str(Path(__file__).parent)
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    run_cli(*base, env=env)
    run_cli(*base, env={**env, "STOP_AT_STEP": str(N)})
    straight, first = run_dirs(tmp_path)
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == N
    run_cli(f"ckpt_path={first}", env=env)  # a run dir: its last.ckpt, with the run's own overrides
    assert_resumed_in_place(tmp_path, first)
    assert any(k.startswith("generator_ema.") for k in weights(first))
    assert_same_training(first, straight, ("train/loss_d", "train/loss_g"))
    opt_a = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"]
    opt_b = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)["optimizer_states"]
    assert len(opt_a) == 2  # both networks' Adam states
    for a, b in zip(opt_a, opt_b):
        for param, state in a["state"].items():
            torch.testing.assert_close(state["exp_avg_sq"], b["state"][param]["exp_avg_sq"], rtol=1e-4, atol=1e-9)


def test_prepare_argv_adds_run_dir_and_original_overrides(tmp_path):
    run = tmp_path / "outputs" / "x" / "runs" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=mlm_tiny\n- trainer.max_steps=10\n- seed=3\n")
    argv = prepare_argv(["prog", f"ckpt_path={run}", "trainer.max_steps=20"])
    ckpt = run / "checkpoints" / "last.ckpt"
    assert argv == ["prog", f"ckpt_path={quote(ckpt)}", "trainer.max_steps=20", "experiment=mlm_tiny", "seed=3",
                    f"hydra.run.dir={quote(run)}"]
    # A command that names its folder (a DDP child) gets only the checkpoint resolved.
    child = ["prog", f"ckpt_path={ckpt}", f"hydra.run.dir={run}"]
    assert prepare_argv(child) == child
    assert prepare_argv(["prog", "model.lr=1"]) == ["prog", "model.lr=1"]


def test_quote_paths_for_hydra():
    assert quote("/tmp/a_b/2026-01-01_00-00-00") == "/tmp/a_b/2026-01-01_00-00-00"
    assert quote("/tmp/with space/it's") == "'/tmp/with space/it\\'s'"


def test_resume_errors_are_one_line(run_cli, tmp_path):
    proc = run_cli("experiment=seq2seq_synthetic", "ckpt_path=last", check=False)
    assert proc.returncode == 1 and "no run of task 'seq2seq_synthetic'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("-m", "ckpt_path=last", "seed=1,2", check=False)
    assert proc.returncode == 1 and "not with --multirun" in proc.stderr


def test_token_batches_follow_the_trainers_epoch():
    from torch.utils.data import DataLoader

    from aigc_lab.data.parallel import TokenBudgetBatchSampler

    epoch = [0]
    lengths = [3 + i % 9 for i in range(200)]
    sampler = TokenBudgetBatchSampler(lengths, lengths, max_tokens=120, train=True, sort_chunk=50, seed=1,
                                      epoch_source=lambda: epoch[0])
    loader = DataLoader(range(200), batch_sampler=sampler)
    batches = iter(loader)  # a resumed run makes its iterator before the trainer moves to its epoch
    epoch[0] = 3
    assert [b.tolist() for b in batches] == sampler.batches(3) != sampler.batches(0)
