"""Wall time of one Optuna sweep run by 1 worker and by 2 workers sharing its study on PostgreSQL.

Tiny trials (the tests' seq2seq fast dev run, one intra-op thread each) make the ratio show what sharing costs
beyond the work itself: on 2 cores, 2 workers at best halve the wall time. Each setting runs ``--repeats`` times,
every run with a study of its own; the medians and their ratio are printed.

    python bench/shared_sweep.py                       # starts a throw-away PostgreSQL (tests/postgres.py)
    python bench/shared_sweep.py --storage postgresql://user:pw@host/db

Needs PostgreSQL's binaries (Debian: apt install postgresql) or ``--storage``, and psycopg.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIAL = ("experiment=seq2seq_synthetic", "debug=fdr", "data.synthetic_train_size=400", "data.synthetic_val_size=40",
         "data.synthetic_test_size=40", "model.net.n_enc_layers=1", "model.net.n_dec_layers=1",
         "model.net.d_model=32", "model.net.n_heads=2", "model.beam_size=2", "model.max_decode_len=20",
         "print_config=false", "hparams_search=seq2seq_optuna")


def sweep(storage: str, study: str, workers: int, n_trials: int, folder: Path) -> float:
    """Seconds from starting ``workers`` sweep processes on one study to the last one's exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROJECT_ROOT": str(folder)}
    command = [sys.executable, "-m", "aigc_lab", "-m", *TRIAL, f"hydra.sweeper.storage={storage}",
               f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={n_trials}",
               f"hydra.sweep.dir={folder / study}"]
    start = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(workers)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a worker failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - start


@contextlib.contextmanager
def storage_url(given: str | None):
    if given:
        yield given
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import postgres  # the tests' throw-away server

    reason = postgres.missing()
    if reason:
        raise SystemExit(f"cannot start PostgreSQL: {reason} (or pass --storage)")
    with postgres.server() as server:
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="a PostgreSQL URL (default: start a throw-away server)")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with storage_url(args.storage) as url, tempfile.TemporaryDirectory(prefix="shared_sweep_") as tmp:
        for repeat in range(args.repeats):
            for workers in (1, 2):
                study = f"bench_{workers}w_{repeat}_{os.getpid()}"
                times[workers].append(sweep(url, study, workers, args.trials, Path(tmp)))
                print(f"{workers} worker(s), run {repeat + 1}: {times[workers][-1]:.1f} s", flush=True)
    one, two = (statistics.median(times[w]) for w in (1, 2))
    print(f"\n| workers | wall time, median of {args.repeats} ({args.trials} trials) | per trial |")
    print("|---|---|---|")
    for workers, t in ((1, one), (2, two)):
        print(f"| {workers} | {t:.1f} s | {t / args.trials:.2f} s |")
    print(f"\n2 workers / 1 worker: {two / one:.2f} (ideal on 2 cores: 0.50)")


if __name__ == "__main__":
    main()
