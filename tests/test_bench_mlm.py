"""The masked-LM benchmarks (bench/mlm_speed.py, bench/mlm_quality.py) in --tiny mode, in subprocesses.

They compare against Hugging Face transformers, a bench-only dependency: skipped where it is not installed.
"""

from __future__ import annotations

import pytest
from conftest import run_bench, run_dirs, table_rows

pytest.importorskip("transformers")

def test_speed_tiny(tmp_path, cache_dir):
    proc = run_bench("mlm_speed.py", "--tiny", cwd=tmp_path, cache_dir=cache_dir)
    assert "command:" in proc.stdout and "transformers" in proc.stdout
    print(proc.stdout)
    rows = table_rows(proc.stdout, "| mode | ours tok/s | HF tok/s | ratio | ours compiled tok/s | compile s "
                                   "| peak memory MB |")
    assert [r[0] for r in rows] == ["fp32", "bf16"]
    for _, ours, theirs, ratio, compiled, compile_s, peak in rows:
        assert float(ours.replace(",", "")) > 0 and float(theirs.replace(",", "")) > 0 and float(ratio) > 0
        assert compiled == compile_s == "—" and float(peak.replace(",", "")) > 0  # --compile not asked for


def test_speed_check_tiny(tmp_path, cache_dir):
    proc = run_bench("mlm_speed.py", "--tiny", "--check", cwd=tmp_path, cache_dir=cache_dir)
    assert proc.stdout.count(": ok") == 2, proc.stdout


def test_quality_tiny_with_our_run(run_cli, tmp_path, text_corpus, cache_dir):
    files = [f"data.{split}_files={text_corpus[split]}" for split in ("train", "val", "test")]
    # Our model: a 2-step run; max_time adds Lightning's Timer, whose clock gives our row's wall minutes.
    run_cli("experiment=mlm_tiny", "debug=fdr", "trainer.max_time='00:00:10:00'", *files, env={"OMP_NUM_THREADS": "1"})
    (run,) = run_dirs(tmp_path)
    proc = run_bench("mlm_quality.py", "--tiny", "--minutes", "0.03", "--ours", str(run), *files,
                     cwd=tmp_path, cache_dir=cache_dir)
    print(proc.stdout)
    rows = table_rows(proc.stdout, "| model | steps | wall min | val perplexity | val masked acc | peak RSS GB |")
    assert len(rows) == 2
    reference, ours = rows
    assert reference[0].startswith("HF") and int(reference[1].replace(",", "")) > 0 and float(reference[5]) > 0
    assert ours[0].startswith("ours") and ours[1] == "2"
    assert 0 <= float(ours[2]) < 10 and ours[5] == "—"  # wall from the run's Timer; its peak RSS is not recorded
    for row in rows:
        assert float(row[3]) > 1 and 0 <= float(row[4]) <= 1

    # A checkpoint trained with another tokenizer is refused: its val ids would not be the same.
    proc = run_bench("mlm_quality.py", "--tiny", "--skip-reference", "--ours", str(run), *files,
                     "data.lowercase=true", cwd=tmp_path, cache_dir=cache_dir, check=False)
    assert proc.returncode == 1 and "another tokenizer" in proc.stderr and "Traceback" not in proc.stderr
