"""The seq2seq benchmarks (bench/seq2seq_speed.py, bench/seq2seq_reference.py) in --tiny mode, in subprocesses:
they run and print their tables; no timing is asserted."""

from __future__ import annotations

from conftest import run_bench, run_dirs, table_rows

TRAIN_HEADER = ("| precision | ours tokens/s | nn.Transformer tokens/s | ours / reference | ours compiled tokens/s "
                "| compile s | peak memory MB |")
DECODE_HEADER = "| decoder | sentences/s | speed-up | identical outputs |"
QUALITY_HEADER = "| model | params | training steps | BLEU | chrF | exact match | decode s |"


def test_speed_tables(tmp_path):
    proc = run_bench("seq2seq_speed.py", "--tiny", cwd=tmp_path, cache_dir=tmp_path / "cache")
    train = table_rows(proc.stdout, TRAIN_HEADER)
    assert [row[0] for row in train] == ["fp32", "bf16-mixed"]
    assert all(float(row[3]) > 0 and row[4] == row[5] == "—" and float(row[6].replace(",", "")) > 0 for row in train)
    decode = table_rows(proc.stdout, DECODE_HEADER)
    assert decode[1][0] == "beam 5, KV cache" and decode[1][3] == "32/32"  # the cache changes no token


def test_reference_and_ours_scored_alike(run_cli, tmp_path):
    run_cli("experiment=seq2seq_synthetic", "debug=fdr", env={"OMP_NUM_THREADS": "1"})
    (run,) = run_dirs(tmp_path)
    # bf16-mixed: the reference trains under autocast and must still decode (its fast path has no CPU autocast)
    proc = run_bench("seq2seq_reference.py", "--tiny", "--steps", "3", "--limit-test", "64", "--ours", str(run),
                     "--save", str(tmp_path / "reference.pt"), "trainer.precision=bf16-mixed",
                     cwd=tmp_path, cache_dir=tmp_path / "cache")
    assert (tmp_path / "reference.pt").is_file()
    rows = table_rows(proc.stdout, QUALITY_HEADER)
    assert [row[0] for row in rows] == ["ours, beam 4", "ours, greedy",
                                        "reference (nn.Transformer, tutorial recipe), greedy"]
    for row in rows:
        assert 0.0 <= float(row[3]) <= 100.0 and 0.0 <= float(row[5]) <= 1.0
