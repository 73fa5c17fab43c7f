"""The masked LM through the real command line, in subprocesses, on the small text corpus fixture."""

from __future__ import annotations

import pytest
import torch
from conftest import run_bench, run_dirs

# One intra-op thread: the tiny model's ops are too small to share, and two threads stall badly
# when another process keeps the second core busy.
ENV = {"OMP_NUM_THREADS": "1"}


def tiny(corpus, **files) -> list[str]:
    paths = {**{f"{split}_files": corpus[split] for split in ("train", "val", "test")}, **files}
    return ["experiment=mlm_tiny", "debug=fdr", *(f"data.{k}={v}" for k, v in paths.items())]


def scalar_and_text_tags(run) -> tuple[set[str], set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, tensors = set(), set()
    for events in (run / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        tensors |= set(acc.Tags()["tensors"])
    return scalars, tensors


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_mlm_fast_dev_run(run_cli, tmp_path, text_corpus, precision):
    proc = run_cli(*tiny(text_corpus), f"trainer.precision={precision}", env=ENV)
    assert "CONFIG" in proc.stdout and "test/perplexity" in proc.stdout
    (run,) = run_dirs(tmp_path)
    assert (run / "STATUS").read_text().startswith("done")
    assert (run / "tokenizer.json").is_file()  # saved with the run
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert ckpt["mlm_config"]["vocab_size"] > 5 and ckpt["tokenizer_json"]
    assert "val/perplexity" in str(ckpt["callbacks"])  # checkpointing monitors perplexity
    scalars, tensors = scalar_and_text_tags(run)
    expected = {"train/loss", "val/loss", "val/perplexity", "val/masked_acc", "lr/decay", "test/perplexity"}
    assert expected <= scalars
    assert "fill_mask/val_examples/text_summary" in tensors


def test_checkpoint_fills_masks_and_resumes(run_cli, tmp_path, text_corpus, cache_dir):
    run_cli(*tiny(text_corpus), env=ENV)
    (run,) = run_dirs(tmp_path)
    # The same run serves bench/mlm_masked_kinds.py (a run dir in, the loss per kind of masked position out).
    assert_the_loss_splits_by_what_the_masked_position_shows(run, tmp_path, cache_dir)
    proc = run_cli(f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "text=The parser [MASK] the [MASK].",
                   "top_k=4", module="aigc_lab.generate", env=ENV)
    lines = proc.stdout.splitlines()
    assert lines[0] == "The parser [MASK] the [MASK]."
    assert lines[1] == "[MASK] 1:" and lines[6] == "[MASK] 2:"
    probs = [float(line.split()[-1]) for line in lines[2:6]]
    assert len(probs) == 4 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1

    proc = run_cli(f"ckpt_path={run}", 'text="no mask"', module="aigc_lab.generate", env=ENV, check=False)
    assert proc.returncode == 1 and "no [MASK] token" in proc.stderr and "Traceback" not in proc.stderr

    from aigc_lab.systems.mlm import MLMSystem

    system = MLMSystem.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert system.tokenizer is not None and system.model is not None  # self-contained without a datamodule

    run_cli(*tiny(text_corpus), "trainer.max_epochs=2", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", env=ENV)
    resumed = run_dirs(tmp_path)[-1]
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "text file not found: {missing} (data.train_files)"),
        ("empty", "empty corpus: no text in {empty}"),
        ("short", "data.block_size=32 needs 30 tokens per block"),
        ("mask_rate", "mask_rate must be in (0, 1), got 1.5"),
    ],
)
def test_bad_input_is_one_clear_error(run_cli, tmp_path, text_corpus, case, message):
    missing, empty, short = tmp_path / "missing.txt", tmp_path / "empty.txt", tmp_path / "short.txt"
    empty.write_text("\n")
    short.write_text("The parser reads the file.\n")
    overrides = {
        "missing": tiny(text_corpus, train_files=missing),
        "empty": tiny(text_corpus, train_files=empty),
        "short": tiny(text_corpus, val_files=short),
        "mask_rate": [*tiny(text_corpus), "data.mask_rate=1.5"],
    }[case]
    proc = run_cli(*overrides, env=ENV, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert message.format(missing=missing, empty=empty) in proc.stderr
    assert "Traceback" not in proc.stderr
    if case == "missing":
        assert "AIGC_DATA_DIR" in proc.stderr


def assert_the_loss_splits_by_what_the_masked_position_shows(run, cwd, cache_dir) -> None:
    out = run_bench("mlm_masked_kinds.py", str(run), cwd=cwd, cache_dir=cache_dir).stdout
    (line,) = [line for line in out.splitlines() if line.startswith(f"{run}: ")]
    cells = line.split(": ", 1)[1].split(" | ")
    assert [cell.split()[0] for cell in cells] == ["[MASK]", "random", "kept"]
    shares = [float(cell.split()[1].rstrip("%:")) for cell in cells]
    assert abs(sum(shares) - 100) < 0.5 and shares[0] > shares[1] and shares[0] > shares[2]  # 80/10/10
    losses = [float(cell.split("loss ")[1].split()[0]) for cell in cells]
    assert all(0 < loss < 20 for loss in losses)
