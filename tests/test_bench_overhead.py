"""bench/overhead.py and its hand-written loops (bench/plain_loop.py): the table comes out, and the plain loop
does the work of the Lightning system (same seed -> the same losses). No timing is asserted.

The whole script (both paths in fresh subprocesses, at the same time: ``--concurrent``, a correctness check) runs
for one system; the loss agreement of the other two is checked in-process against the launcher's own
``train(cfg)`` (what ``python -m aigc_lab`` runs once Hydra has composed the config), which costs seconds
instead of two interpreter starts per system.
"""

from __future__ import annotations

import sys

import pytest
from conftest import REPO, run_bench, table_rows

sys.path.insert(0, str(REPO / "bench"))
import overhead  # noqa: E402  (bench/ is not a package)
import overhead_paired  # noqa: E402


def test_overhead_table(tmp_path, cache_dir):
    proc = run_bench("overhead.py", "--tiny", "--concurrent", "--system", "seq2seq", cwd=tmp_path, cache_dir=cache_dir)
    (row,) = table_rows(proc.stdout, overhead.TABLE_HEADER)
    system, experiment, precision, batch, steps, launcher, plain, ratio, loss_diff = row
    assert (system, experiment, precision, batch) == ("seq2seq", "seq2seq_synthetic", "32-true", "<= 512 tokens")
    assert steps == "8 x 1"  # 12 steps - 3 warm-up - the last (no next start): 8 differences, 1 run
    assert float(launcher) > 0 and float(plain) > 0 and float(ratio) > 0
    assert float(loss_diff) == 0.0  # same seed: the same dropout masks, batches and weights in both paths
    assert "losses agree (max abs diff <= 1e-4): yes" in proc.stdout
    assert not list(tmp_path.glob("outputs"))  # run dirs go to a temporary dir, removed afterwards


def test_overhead_paired_table(tmp_path, cache_dir):
    """Both paths in one process, taking turns: each keeps its own random streams (seq2seq: dropout, batch order),
    so the losses still agree."""
    proc = run_bench("overhead_paired.py", "--tiny", "--system", "seq2seq", cwd=tmp_path, cache_dir=cache_dir)
    (row,) = table_rows(proc.stdout, overhead_paired.TABLE_HEADER)
    system, experiment, precision, batch, steps, block, launcher, plain, ratio, pairs, loss_diff = row
    assert (system, experiment, precision, batch, block) == ("seq2seq", "seq2seq_synthetic", "32-true",
                                                             "<= 512 tokens", "4")
    assert steps == "19 x 1"  # 24 steps - 4 warm-up - the launcher's last (no next start), 1 run
    assert float(launcher) > 0 and float(plain) > 0 and float(ratio.strip("*")) > 0
    low, high = (float(x) for x in pairs.split("-"))
    assert 0 < low <= high
    assert float(loss_diff) == 0.0
    assert "losses agree (max abs diff <= 1e-4): yes" in proc.stdout
    assert not list(tmp_path.glob("outputs"))


@pytest.mark.parametrize("system", ["gan", "mlm"])
def test_plain_loop_matches_the_launcher(system, tmp_path, data_dir, cache_dir, text_corpus, single_thread,
                                         monkeypatch):
    import plain_loop
    from hydra import compose, initialize_config_dir

    from aigc_lab.train import train
    from aigc_lab.utils.paths import conf_dir

    monkeypatch.setenv("AIGC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("AIGC_CACHE_DIR", str(cache_dir))
    files = [f"data.{split}_files={text_corpus[split]}" for split in ("train", "val", "test")]
    args = overhead.parse_args(["--tiny", *(f"mlm:{f}" for f in files)])
    out, steps = tmp_path / "steps.json", 6
    overrides = [*overhead.system_overrides(args, system), f"trainer.max_steps={steps}"]
    launcher = [*overrides, "+callbacks.step_clock._target_=step_clock.StepClock", f"+callbacks.step_clock.out={out}",
                f"+callbacks.step_clock.record_losses={steps}", f"paths.output_dir={tmp_path}",
                f"paths.work_dir={tmp_path}", "print_config=false"]
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        train(compose("train", overrides=launcher))
        cfg = compose("train", overrides=overrides)
    ours = overhead.json.loads(out.read_text())
    plain = plain_loop.run(plain_loop.build(system, cfg), steps, record_losses=steps)
    assert len(plain["starts"]) == len(ours["starts"]) == steps
    keys = ["train/loss_d", "train/loss_g"] if system == "gan" else ["train/loss"]
    assert sorted(ours["losses"]) == sorted(plain["losses"]) == keys
    for key in keys:
        assert len(ours["losses"][key]) == steps
        assert plain["losses"][key] == pytest.approx(ours["losses"][key], abs=1e-6), key
    assert overhead.max_loss_diff(ours, plain) <= 1e-6
