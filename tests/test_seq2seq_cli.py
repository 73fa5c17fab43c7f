"""The seq2seq system through the real command line, in subprocesses: the synthetic task and a tiny TSV corpus."""

from __future__ import annotations

import pytest
import torch
from conftest import run_dirs

# One intra-op thread: the tiny model's ops are too small to share, and two threads stall badly
# when another process keeps the second core busy.
ENV = {"OMP_NUM_THREADS": "1"}
TINY_NET = ("model.net.n_enc_layers=1", "model.net.n_dec_layers=1", "model.net.d_model=32", "model.net.n_heads=2",
            "model.beam_size=2", "model.max_decode_len=20")


def en_fr(corpus, **files) -> list[str]:
    paths = {**{f"{split}_file": corpus[split] for split in ("train", "val", "test")}, **files}
    return ["experiment=seq2seq_en_fr", "debug=fdr", "data.vocab_size=320", "data.max_tokens=1024",
            "data.eval_max_tokens=2048", *TINY_NET, *(f"data.{k}={v}" for k, v in paths.items())]


def tags(run) -> tuple[set[str], set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, tensors = set(), set()
    for events in (run / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        tensors |= set(acc.Tags()["tensors"])
    return scalars, tensors


def check_run(run) -> dict:
    assert (run / "STATUS").read_text().startswith("done")
    assert (run / "tokenizer.json").is_file()  # saved with the run
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert ckpt["seq2seq_config"]["vocab_size"] > 4 and ckpt["tokenizer_json"]
    return ckpt


def test_synthetic_fast_dev_run(run_cli, tmp_path):
    proc = run_cli("experiment=seq2seq_synthetic", "debug=fdr", env=ENV)
    assert "CONFIG" in proc.stdout and "test/exact_match" in proc.stdout
    (run,) = run_dirs(tmp_path)
    ckpt = check_run(run)
    assert "val/exact_match" in str(ckpt["callbacks"])  # checkpointing monitors exact match


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_tsv_fast_dev_run(run_cli, tmp_path, tsv_corpus, precision):
    proc = run_cli(*en_fr(tsv_corpus), f"trainer.precision={precision}", env=ENV)
    log = proc.stdout + proc.stderr
    assert f"{tsv_corpus['train']}: skipped 4 of 304 lines (empty side: 2, no tab: 2)" in log  # reported, not fatal
    assert "% padding" in log and "test/bleu" in proc.stdout
    (run,) = run_dirs(tmp_path)
    ckpt = check_run(run)
    assert "val/bleu" in str(ckpt["callbacks"])  # checkpointing monitors BLEU
    scalars, tensors = tags(run)
    expected = {"train/loss", "val/loss", "val/bleu", "val/chrf", "val/exact_match", "lr/decay",
                "test/loss", "test/bleu", "test/chrf"}
    assert expected <= scalars
    assert "translations/val_examples/text_summary" in tensors


def test_checkpoint_translates(run_cli, tmp_path, tsv_corpus):
    run_cli(*en_fr(tsv_corpus), env=ENV)
    (run,) = run_dirs(tmp_path)
    proc = run_cli(f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "text=the parser reads the file",
                   module="aigc_lab.generate", env=ENV)
    assert proc.stdout.count("\n") == 1  # one line: the translation (an untrained model's may be empty)

    source, out = tmp_path / "in.txt", tmp_path / "translations" / "out.txt"
    source.write_text("the parser reads the file\n\na module writes the header\n", encoding="utf-8")
    for beam in ("1", "3"):
        proc = run_cli(f"ckpt_path={run}", f"input={source}", f"out={out}", f"beam_size={beam}",
                       "length_penalty=0.6", module="aigc_lab.generate", env=ENV)
        assert f"translated 3 line(s) from {source} to {out}" in proc.stdout
        lines = out.read_text(encoding="utf-8").split("\n")
        assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # one line per input line, empty stays empty

    proc = run_cli(f"ckpt_path={run}", "text=hello", "beam_size=0", module="aigc_lab.generate", env=ENV, check=False)
    assert proc.returncode == 1 and "beam_size must be >= 1" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(f"ckpt_path={run}", module="aigc_lab.generate", env=ENV, check=False)
    assert proc.returncode == 1 and 'needs text="..." or input=FILE' in proc.stderr

    from aigc_lab.systems.seq2seq import Seq2SeqSystem
    from aigc_lab.translate import translate

    system = Seq2SeqSystem.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert system.tokenizer is not None and system.model is not None  # self-contained without a datamodule
    assert len(translate(system.model.eval(), system.tokenizer, ["the file", ""], beam_size=2)) == 2


@pytest.mark.parametrize("case", ["no_tab", "missing"])
def test_bad_tsv_is_one_clear_error(run_cli, tmp_path, tsv_corpus, case):
    bad, missing = tmp_path / "bad.tsv", tmp_path / "missing.tsv"
    bad.write_text("the parser reads the file\nle fichier\nno tab anywhere\n", encoding="utf-8")
    proc = run_cli(*en_fr(tsv_corpus, train_file=bad if case == "no_tab" else missing), env=ENV, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    if case == "no_tab":
        assert f"no usable source<TAB>target pair in {bad} (data.train_file): 3 lines, skipped no tab: 3" in proc.stderr
    else:
        assert f"TSV file not found: {missing} (data.train_file)" in proc.stderr and "AIGC_DATA_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr
    (run,) = run_dirs(tmp_path)
    assert (run / "STATUS").read_text().startswith("failed")
