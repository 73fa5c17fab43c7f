"""Several nodes on this machine: two "nodes" of one CPU process each, started by torchrun with a c10d rendezvous
(gloo) as the README's multi-node command does, and by a simulated srun (the ``SLURM_*`` variables Lightning reads).
Each checks that one run dir is written, by rank zero, and that both ranks end with the same weights."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import ENV, SEQ2SEQ
from test_ddp import only_rank_zero_wrote

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
TWO_NODES = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2",
             "hydra.run.dir=outputs/two_nodes", "+callbacks.report._target_=rank_report.RankReport")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_nodes(data_dir, cache_dir, tmp_path):
    """Start one command per node (``commands[i]``, environment ``envs[i]``) at once in tmp_path; wait for all."""
    reports = tmp_path / "reports"
    reports.mkdir()
    tests_dir = str(Path(__file__).parent)

    def run(commands: list[list[str]], envs: list[dict[str, str]]) -> dict[int, tuple[int, str]]:
        for old in reports.iterdir():
            old.unlink()
        base = {**os.environ, **ENV, "AIGC_DATA_DIR": str(data_dir), "AIGC_CACHE_DIR": str(cache_dir),
                "PROJECT_ROOT": str(tmp_path), "RANK_REPORT_DIR": str(reports),
                "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
        procs = [subprocess.Popen(cmd, cwd=tmp_path, env={**base, **env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for cmd, env in zip(commands, envs)]
        outputs = [proc.communicate(timeout=300)[0] for proc in procs]
        for proc, out in zip(procs, outputs):
            assert proc.returncode == 0, out[-4000:]
        found = {}
        for path in reports.glob("*.json"):
            report = json.loads(path.read_text())
            found[report["rank"]] = (report["step"], report["digest"])
        return found

    return run


def one_run_dir(tmp_path: Path, launches: int = 1) -> Path:
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["two_nodes"]  # no rank made a dir of its own
    run = tmp_path / "outputs" / "two_nodes"
    only_rank_zero_wrote(run, launches)
    return run


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")
def test_torchrun_two_nodes_train_one_run_and_resume_it(run_nodes, tmp_path):
    def torchrun(*overrides: str) -> list[str]:
        return [TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=localhost:{port}", "-m", "aigc_lab", *overrides]

    port = free_port()
    ranks = run_nodes([torchrun(*SEQ2SEQ, *TWO_NODES)] * 2, [{}, {}])
    run = one_run_dir(tmp_path)
    assert sorted(ranks) == [0, 1] and ranks[0] == ranks[1] and ranks[0][0] == 2  # same weights after 2 steps

    port = free_port()  # resume on 2 nodes: one more epoch of 2 steps, from the run dir alone
    resume = ("ckpt_path=outputs/two_nodes", "trainer.max_epochs=2",
              "+callbacks.report._target_=rank_report.RankReport")
    ranks = run_nodes([torchrun(*resume)] * 2, [{}, {}])
    assert ranks[0] == ranks[1] and ranks[0][0] == 4
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert one_run_dir(tmp_path, launches=2) == run and (run / ".hydra.1").is_dir()


def test_slurm_two_nodes_train_one_run(run_nodes, tmp_path):
    port = str(free_port())
    command = [sys.executable, "-m", "aigc_lab", *SEQ2SEQ, *TWO_NODES]
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "aigc", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "2", "SLURM_NODELIST": "localhost", "SLURM_LOCALID": "0", "MASTER_PORT": port}
    envs = [{**slurm, "SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank)} for rank in (0, 1)]
    ranks = run_nodes([command] * 2, envs)
    one_run_dir(tmp_path)
    assert sorted(ranks) == [0, 1] and ranks[0] == ranks[1] and ranks[0][0] == 2


@pytest.mark.parametrize(("env", "rank"), [({}, 0), ({"RANK": "0"}, 0), ({"RANK": "1"}, 1),
                                           ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, 0),
                                           ({"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}, 1)])
def test_ranks_above_zero_of_an_external_launcher_write_no_hydra_dir(monkeypatch, env, rank):
    from aigc_lab.utils.ddp import external_rank, external_rank_overrides

    for key in ("RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert external_rank() == rank
    assert external_rank_overrides(["experiment=mlm_tiny"]) == (["hydra.output_subdir=null"] if rank else [])
    assert external_rank_overrides(["hydra.output_subdir=null"]) == []  # a Lightning-launched rank has it already
