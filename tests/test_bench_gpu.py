"""bench/gpu.sh and bench/gpu_steps.py: without a GPU each stops with one clear line; with --cpu the three systems
run on tiny configs and the table comes out (real MNIST-format fixture data for the GAN, synthetic text where the
corpora are absent). No timing is asserted. The table is made in-process (the suite has torch and Lightning
loaded already); the shell wrapper is run for what it does itself."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, table_rows

sys.path.insert(0, str(REPO / "bench"))
import gpu_steps  # noqa: E402  (bench/ is not a package)


def gpu_sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0"), reason="a GPU machine")
def test_gpu_sh_without_gpu_is_one_line(tmp_path):
    proc = gpu_sh("--steps", "3", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: no GPU on this machine") and "--cpu" in line


def test_gpu_sh_runs_the_python_script(tmp_path):
    proc = gpu_sh("--cpu", "--help", cwd=tmp_path)  # the wrapper finds python and the script; --help: no work
    assert proc.returncode == 0 and "bench/gpu.sh --cpu" in proc.stdout


def test_gpu_steps_without_cuda(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_steps.main([]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: no CUDA GPU") and len(err.strip().splitlines()) == 1


@pytest.fixture
def lightning_log_levels():
    names = ("lightning.pytorch", "lightning.fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():  # gpu_steps quiets them: give other tests their INFO lines back
        logging.getLogger(name).setLevel(level)


def test_cpu_table(monkeypatch, capsys, data_dir, cache_dir, single_thread, lightning_log_levels):
    monkeypatch.setenv("AIGC_DATA_DIR", str(data_dir))  # MNIST fixture files, no text corpora
    monkeypatch.setenv("AIGC_CACHE_DIR", str(cache_dir))
    assert gpu_steps.main(["--cpu"]) == 0
    rows = {row[0]: row for row in table_rows(capsys.readouterr().out, gpu_steps.TABLE_HEADER)}
    assert list(rows) == ["gan", "mlm", "seq2seq"]
    assert [rows[s][2] for s in rows] == ["real", "synthetic", "synthetic (the built-in reversal task)"]
    for system, row in rows.items():
        _, _, _, precision, _, step_ms, samples, tokens, tflops, mfu, peak = row
        assert precision == "32-true" and mfu == "—"  # auto under the suite's pinned CPU probe; no CPU peak
        assert float(step_ms) > 0 and float(samples.replace(",", "")) > 0 and float(tflops) > 0 and float(peak) > 0
        assert (tokens == "—") == (system == "gan")
