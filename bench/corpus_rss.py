"""Peak memory of ``experiment=mlm_pydocs`` on corpora of growing size: the whole command (tokenizing every split
into shards, 50 training steps, the test) from an empty token cache, under ``/usr/bin/time -v``. Every run reads
the same WordPiece (``data.tokenizer_path``: trained once on the documentation's training split), so the rows
differ in the corpus alone; ``--train-tokenizer`` has each run train its own on its corpus instead.

The training corpora are the Python documentation repeated with shuffled lines (``bench/tokenize_throughput.py``'s
``build_corpus``, written to ``--corpus-dir``, never into the repository); validation and test stay the
documentation's own splits. One row per size, with the growth of peak RSS over the smallest.

    AIGC_DATA_DIR=../shared/data python bench/corpus_rss.py --sizes 100 1000
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokenize_throughput import build_corpus, pydocs, text_chunks, train_wordpiece  # it puts src/ on the path

ROOT = Path(__file__).resolve().parent.parent


def preset_tokenizer(folder: Path) -> Path:
    """The preset's WordPiece (8,192 tokens) trained on the documentation's training split, saved once."""
    path = folder / "pydocs_wordpiece_8192.json"
    if not path.is_file():
        train_wordpiece(text_chunks([pydocs("train.txt")]), vocab_size=8192).save(str(path))
    return path


def run(corpus: Path, steps: int, scratch: Path, extra: list[str]) -> dict[str, float | str]:
    env = {**os.environ, "AIGC_CACHE_DIR": str(scratch / "cache"), "PROJECT_ROOT": str(scratch)}
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "aigc_lab", "experiment=mlm_pydocs",
               f"data.train_files={corpus}", f"trainer.max_steps={steps}", f"hydra.run.dir={scratch / 'run'}",
               "print_config=false", *extra]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"exit {proc.returncode}:\n{proc.stderr[-4000:]}")
    out = proc.stdout + proc.stderr
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out).group(1))
    tokenized = re.search(r"Tokenized train \(.*?\): (\d+) tokens from ([\d.]+) MB in ([\d.]+) s \(([\d.]+) MB/s", out)
    return {"peak_gb": peak_kb / 1e6, "wall_s": wall, "tokens": int(tokenized.group(1)),
            "tokenize_s": float(tokenized.group(3)), "mb_s": float(tokenized.group(4))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="training corpora, in MB")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "aigc_bench_corpus")
    parser.add_argument("--train-tokenizer", action="store_true", help="each run trains its tokenizer on its corpus")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run")
    args = parser.parse_args()
    if not args.train_tokenizer:
        args.overrides = [f"data.tokenizer_path={preset_tokenizer(args.corpus_dir)}", *args.overrides]

    rows = []
    for mb in args.sizes:
        corpus = build_corpus(mb, args.corpus_dir)
        with tempfile.TemporaryDirectory() as scratch:
            result = run(corpus, args.steps, Path(scratch), args.overrides)
        rows.append((mb, corpus.stat().st_size / 1e6, result))
        print(f"{mb} MB: {result}", flush=True)
    first = rows[0][2]["peak_gb"]
    print("\n| training corpus | tokens | train-split tokenizing s (MB/s) | whole command s | peak RSS GB | "
          "growth over the first, MB |")
    print("|---|---|---|---|---|---|")
    for _, size, r in rows:
        print(f"| {size:.0f} MB | {r['tokens']:,} | {r['tokenize_s']:.0f} ({r['mb_s']:.1f}) | {r['wall_s']:.0f} | "
              f"{r['peak_gb']:.2f} | {1000 * (r['peak_gb'] - first):+.0f} |")


if __name__ == "__main__":
    main()
