"""bench/precision_quality.py on a tiny MLM: both precisions run through the launcher and land in the table."""

from __future__ import annotations

from conftest import run_bench, table_rows

HEADER = "| system | budget | metric | fp32 | bf16-mixed | change | fp32 wall s | bf16 wall s |"


def test_precision_quality_table(tmp_path, text_corpus):
    files = [f"data.{split}_files={text_corpus[split]}" for split in ("train", "val", "test")]
    tiny = ["data.vocab_size=300", "data.block_size=32", "data.batch_size=8", "data.eval_batch_size=16",
            "model.net.n_layers=1", "model.net.d_model=32", "model.net.n_heads=2", "trainer.max_steps=6",
            "trainer.val_check_interval=3", "callbacks=none", "logger=csv"]
    proc = run_bench("precision_quality.py", "--systems", "mlm", "--out", str(tmp_path / "runs"), *files, *tiny,
                     cwd=tmp_path, cache_dir=tmp_path / "cache")
    (row,) = table_rows(proc.stdout, HEADER)
    assert row[0] == "mlm" and row[2] == "val/perplexity"
    fp32, bf16, change = float(row[3]), float(row[4]), float(row[5])
    assert 1.0 < fp32 < 400 and 1.0 < bf16 < 400 and abs(change - (bf16 - fp32)) < 2e-3
    for precision in ("32-true", "bf16-mixed"):  # each run says which precision it trained in
        config = tmp_path / "runs" / f"mlm_{precision}" / ".hydra" / "config.yaml"
        assert f"precision: {precision}" in config.read_text()
