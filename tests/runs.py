"""Tiny configurations of the three systems and readers of what their runs leave, for the CLI tests of
resuming, evaluation, throughput and DDP (tests/test_resume.py, test_eval.py, test_throughput.py, test_ddp.py)."""

from __future__ import annotations

from pathlib import Path

# One intra-op thread per process: the tiny models' ops are too small to share, and two threads stall
# badly when another process keeps the second core busy.
ENV = {"OMP_NUM_THREADS": "1"}

GAN = ("experiment=gan_mnist", "debug=fdr", "data.batch_size=16", "data.eval_batch_size=50", "model.net.g_width=8",
       "model.net.d_width=8", "model.fid_features=none", "callbacks.model_checkpoint.monitor=null",
       "optimized_metric=null")  # no FID: no classifier to train first
# Small token budgets: several batches per split (at least one per rank under DDP), whatever the preset's lengths.
SEQ2SEQ = ("experiment=seq2seq_synthetic", "debug=fdr", "data.synthetic_train_size=400", "data.synthetic_val_size=40",
           "data.synthetic_test_size=40", "data.max_tokens=512", "data.eval_max_tokens=256", "model.net.d_model=32",
           "model.net.n_enc_layers=1", "model.net.n_dec_layers=1", "model.net.n_heads=2", "model.beam_size=1")


def mlm(corpus: dict[str, Path]) -> tuple[str, ...]:
    files = (f"data.{split}_files={corpus[split]}" for split in ("train", "val", "test"))
    return ("experiment=mlm_tiny", "debug=fdr", "data.batch_size=8", "data.eval_batch_size=16", *files)


def scalars(run: Path, tag: str) -> dict[int, float]:
    """step -> value of a TensorBoard scalar, over every event file of the run (a resumed run has several)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[int, float] = {}
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values.update({e.step: e.value for e in acc.Scalars(tag)})
    return values


def status(run: Path) -> str:
    return (run / "STATUS").read_text().split("\n", 1)[0]
