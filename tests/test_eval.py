"""``python -m aigc_lab.eval run_dir=...``: the test metrics of a finished run, from its saved config alone."""

from __future__ import annotations

import json

import pytest
from conftest import run_dirs
from runs import ENV, SEQ2SEQ, scalars


def test_eval_reuses_the_saved_config(run_cli, tmp_path):
    run_cli(*SEQ2SEQ, env=ENV)
    (run,) = run_dirs(tmp_path)
    trained = scalars(run, "test/loss")

    # No experiment on the command line: the run's own config is reused; the best checkpoint is tested.
    proc = run_cli(f"run_dir={run}", module="aigc_lab.eval", env=ENV)
    (report,) = run.glob("eval_*.json")
    assert f"wrote {report}" in proc.stdout
    result = json.loads(report.read_text())
    assert result["checkpoint"].startswith(str(run / "checkpoints"))
    assert {"test/loss", "test/bleu", "test/exact_match"} <= set(result["metrics"])
    assert result["metrics"]["test/loss"] == pytest.approx(next(iter(trained.values())), rel=1e-5)
    assert run_dirs(tmp_path) == [run]  # evaluating made no run dir

    out = tmp_path / "last.json"
    run_cli(f"run_dir={run}", "ckpt_path=last", "trainer.precision=bf16-mixed", f"out={out}", module="aigc_lab.eval",
            env=ENV)
    result = json.loads(out.read_text())
    assert result["checkpoint"].endswith("last.ckpt") and result["overrides"] == ["trainer.precision=bf16-mixed"]

    alias = tmp_path / "alias.json"  # ckpt= still works, and says it is an alias of the key every command takes
    proc = run_cli(f"run_dir={run}", "ckpt=last", f"out={alias}", module="aigc_lab.eval", env=ENV)
    assert "note: ckpt= is an alias of ckpt_path=" in proc.stderr
    assert json.loads(alias.read_text())["checkpoint"].endswith("last.ckpt")

    proc = run_cli(f"run_dir={run}", "data.nope=1", module="aigc_lab.eval", check=False, env=ENV)
    assert proc.returncode == 1 and "data.nope" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_mistakes_are_one_line(run_cli, tmp_path):
    proc = run_cli(f"run_dir={tmp_path / 'nope'}", module="aigc_lab.eval", check=False)
    assert proc.returncode == 1 and "no saved config" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(module="aigc_lab.eval", check=False)
    assert proc.returncode == 1 and "give the run to evaluate" in proc.stderr
