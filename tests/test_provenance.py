"""Every run dir records what made it: command, git state, versions, device and precision."""

from __future__ import annotations

import json
import subprocess

from conftest import run_dirs
from omegaconf import OmegaConf
from runs import ENV, SEQ2SEQ

from aigc_lab.utils.run_info import git_state, write_provenance

CFG = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed"}})


def git(repo, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_git_state_of_a_dirty_repo_and_outside_any(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "first")
    state = git_state(repo)
    assert len(state["commit"]) == 40 and state["dirty"] is False and not state["diff"]
    (repo / "a.txt").write_text("two\n")
    (repo / "new.txt").write_text("x\n")
    state = git_state(repo)
    assert state["dirty"] is True and "+two" in state["diff"] and state["untracked"] == ["new.txt"]
    assert git_state(tmp_path / "elsewhere") == {"commit": None}  # no repo (or no git): no failure


def test_write_provenance_appends_one_launch_per_start(tmp_path):
    first = write_provenance(tmp_path, CFG)
    second = write_provenance(tmp_path, CFG)
    launches = json.loads((tmp_path / "provenance.json").read_text())["launches"]
    assert len(launches) == 2 and launches[0]["time"] == first["time"] and launches[1] == json.loads(
        json.dumps(second, default=str))
    record = launches[0]
    assert {"torch", "lightning", "hydra-core", "torchmetrics", "omegaconf"} <= set(record["versions"])
    assert record["versions"]["torch"] and record["python"] and record["command"]
    assert record["device"]["precision"] == "bf16-mixed" and record["device"]["accelerator"] == "cpu"
    assert record["device"]["cpu_count"] >= 1
    if record["git"]["commit"] and record["git"]["dirty"]:  # this checkout has local changes
        assert (tmp_path / record["git"]["diff_file"]).read_text()
        assert launches[1]["git"]["diff_file"] == "git_diff.1.patch"


def test_a_run_dir_holds_its_provenance(run_cli, tmp_path):
    run_cli(*SEQ2SEQ, "trainer.precision=bf16-mixed", env=ENV)
    (run,) = run_dirs(tmp_path)
    (launch,) = json.loads((run / "provenance.json").read_text())["launches"]
    assert "-m aigc_lab" in launch["command"] and "experiment=seq2seq_synthetic" in launch["command"]
    assert "trainer.precision=bf16-mixed" in launch["overrides"]
    assert launch["device"]["precision"] == "bf16-mixed" and launch["cwd"] == str(tmp_path)
