"""Tokenization throughput: aigc_lab's streamed, parallel shards against one process calling ``encode_batch``.

Both tokenize the same corpus with the same WordPiece (8,192 tokens, trained once on the Python documentation's
training split) into flat uint16 ids, and the ids are checked equal:

- baseline: one process reads the file, splits its non-blank lines and calls ``tokenizers``' ``encode_batch`` on
  batches of them (``tokenizers`` spreads each batch over its own threads), collecting the ids into one array;
- ours: ``data/shards.py`` as ``python -m aigc_lab`` runs it: the file cut into line-aligned chunks, one worker
  process per core, each chunk written as a memory-mapped shard.

The corpus is the Python documentation repeated, its lines shuffled in each repeat, up to ``--mb`` megabytes
(written once to ``--corpus-dir``; never into the repository). Medians of ``--repeats`` alternating runs.

    AIGC_DATA_DIR=../shared/data python bench/tokenize_throughput.py --mb 100 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from aigc_lab.data import shards  # noqa: E402
from aigc_lab.data.text import encode_lines  # noqa: E402
from aigc_lab.data.tokenizer import text_chunks, train_wordpiece  # noqa: E402

BASELINE_BATCH = 10_000  # lines per encode_batch call


def pydocs(name: str) -> Path:
    return Path(os.environ.get("AIGC_DATA_DIR", ROOT.parent / "shared" / "data")) / "text" / "python-docs" / name


def build_corpus(mb: int, folder: Path, seed: int = 0) -> Path:
    """The documentation's training text repeated with its lines shuffled in each repeat, cut at ``mb`` MB."""
    path = folder / f"pydocs_{mb}mb.txt"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    lines = pydocs("train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    rng, written, target = random.Random(seed), 0, mb * 1_000_000
    tmp = path.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8") as out:
        while written < target:
            rng.shuffle(lines)
            for line in lines:
                out.write(line)
                written += len(line.encode())
                if written >= target:
                    break
    tmp.rename(path)
    return path


def baseline(path: Path, tokenizer) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    parts = []
    for i in range(0, len(lines), BASELINE_BATCH):
        ids = [e.ids for e in tokenizer.encode_batch_fast(lines[i : i + BASELINE_BATCH], add_special_tokens=False)]
        parts.append(np.fromiter(chain.from_iterable(ids), dtype=np.uint16, count=sum(map(len, ids))))
    ids = np.concatenate(parts)
    return time.perf_counter() - start, ids


def ours(path: Path, tokenizer, folder: Path, processes: int | None) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    manifest = shards.build(folder, shards.jobs_for([path]), encode_lines, tokenizer, {"dtype": "<u2"},
                            what=path.name, processes=processes)
    seconds = time.perf_counter() - start
    arrays = [shards.load_array(folder, s, "ids", np.uint16, s["tokens"]) for s in manifest["shards"]]
    return seconds, np.concatenate(arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=None, help="ours: worker processes (default: one per core)")
    parser.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "aigc_bench_corpus")
    args = parser.parse_args()

    corpus = build_corpus(args.mb, args.corpus_dir)
    tokenizer = train_wordpiece(text_chunks([pydocs("train.txt")]), vocab_size=8192)
    size_mb = corpus.stat().st_size / 1e6
    base_s, ours_s = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.repeats):
            seconds, base_ids = baseline(corpus, tokenizer)
            base_s.append(seconds)
            seconds, our_ids = ours(corpus, tokenizer, Path(scratch) / f"run{r}", args.processes)
            ours_s.append(seconds)
            if not np.array_equal(base_ids, our_ids):
                raise SystemExit("the two paths gave different ids")
            tokens = len(our_ids)
            del base_ids, our_ids
            print(f"repeat {r}: baseline {base_s[-1]:.1f} s, ours {ours_s[-1]:.1f} s", flush=True)
    b, o = statistics.median(base_s), statistics.median(ours_s)
    processes = args.processes or shards.default_processes()
    print(f"\ncorpus {corpus} ({size_mb:.1f} MB, {tokens:,} tokens); ours with {processes} processes; "
          f"medians of {args.repeats}")
    print("| path | seconds | MB/s | tokens/s | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| one process, encode_batch | {b:.1f} | {size_mb / b:.2f} | {tokens / b:,.0f} | 1.00 |")
    print(f"| aigc_lab shards | {o:.1f} | {size_mb / o:.2f} | {tokens / o:,.0f} | {b / o:.2f} |")


if __name__ == "__main__":
    main()
