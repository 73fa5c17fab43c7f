"""Framework overhead, paired: the launcher and the plain loop take turns in one process, every ``--block`` steps.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/overhead_paired.py --system gan     # ~5 min
    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/overhead_paired.py                  # all three, ~20 min
    .venv/bin/python bench/overhead_paired.py --tiny --system mlm mlm:data.train_files=a.txt  # a smoke test

Why a second protocol: bench/overhead.py times (a) ``python -m aigc_lab`` and (b) the plain loop of
bench/plain_loop.py in separate, alternating processes. On this machine the speed of the CPU drifts over tens
of seconds: the same plain GAN loop measured 53 to 72 ms per step from one 15-second stretch to the next, even
within one process, which is far more than the 2 ms (3%) the GAN's target is about. Here both paths live in one
process and alternate every ``--block`` steps (about a second), so the drift falls on both alike:

- the plain loop is built first, from the same composed config and seed as in bench/overhead.py;
- then the real launcher runs in the same process (``aigc_lab.__main__.cli()``: Hydra, the run dir, the
  default callbacks, TensorBoard logging, exactly as ``python -m aigc_lab`` with validation and test off) with
  one more callback, ``bench/interleave.py``, which runs ``--block`` plain steps before every ``--block``-th
  launcher step and times each step of both paths (batch start to next batch start, the other path's block
  left out);
- each path keeps its own random streams, so the losses of the first ``--compare`` logging steps agree as
  in bench/overhead.py.

Per run (a fresh process each): the median step time of each path after ``--warmup`` steps and their ratio,
and the ratio of each block pair's medians, whose spread shows how steady the pairing is. The table gives the
median over ``--runs`` runs. The first step after a switch pays for cold caches on both sides alike and is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import overhead
from overhead import SYSTEMS, describe_batch, max_loss_diff, run_systems, system_overrides, verdict

BENCH = Path(__file__).resolve().parent
STEPS = {"gan": 600, "mlm": 200, "seq2seq": 160}  # per path; ~40-80 s of each path per run at the presets
BLOCK = {"gan": 10, "mlm": 4, "seq2seq": 2}  # about a second of steps per block
TABLE_HEADER = ("| system | experiment | precision | batch | steps x runs | block | launcher ms/step | plain ms/step "
                "| launcher / plain | block-pair ratios p25-p75 | max abs loss diff |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every system, or 'SYSTEM:key=value'")
    p.add_argument("--system", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--steps", type=int, default=None, help=f"training steps of each path per run (default {STEPS})")
    p.add_argument("--block", type=int, default=None, help=f"steps per turn (default {BLOCK})")
    p.add_argument("--warmup", type=int, default=20, help="steps of each path not timed at the start of a run")
    p.add_argument("--runs", type=int, default=3, help="runs (fresh processes); the table shows their median")
    p.add_argument("--compare", type=int, default=5,
                   help="losses compared between the paths: those of the first N logging steps")
    p.add_argument("--precision", default=None, help="trainer.precision for both paths (default: the preset's)")
    p.add_argument("--tiny", action="store_true", help="tiny models and data, 24 steps, blocks of 4, 1 run")
    p.add_argument("--workdir", default=None, help="run dirs and step records (default: a temporary dir, removed)")
    p.add_argument("--child", choices=SYSTEMS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        given = {a.split("=", 1)[0] for a in (argv if argv is not None else sys.argv[1:])}
        args.warmup = args.warmup if "--warmup" in given else 4
        args.runs = args.runs if "--runs" in given else 1
        args.steps, args.block = args.steps or 24, args.block or 4
    for override in args.overrides:
        prefix = override.split(":", 1)[0] if ":" in override.split("=", 1)[0] else None
        if prefix is not None and prefix not in SYSTEMS:
            p.error(f"override {override!r}: the prefix must be one of {', '.join(SYSTEMS)}")
    return args


# ---------------------------------------------------------------- one run, in its own process
def child(args: argparse.Namespace) -> int:
    """Build the plain loop, then run the launcher in this process with the interleaving callback."""
    from aigc_lab.utils.malloc import keep_freed_memory

    keep_freed_memory()  # before the plain loop's first tensor; cli() below applies it again (the same settings)
    import interleave
    from plain_loop import build

    from aigc_lab.__main__ import cli

    cfg = overhead.compose([*args.overrides, f"trainer.max_steps={args.steps}"])
    interleave.PLAIN = build(args.child, cfg)
    interleave.PLAIN_RNG = interleave.RngState.capture()  # the plain loop's streams go on from here
    sys.argv = ["aigc_lab", *args.overrides, f"trainer.max_steps={args.steps}",
                "+callbacks.interleave._target_=interleave.Interleave", f"+callbacks.interleave.out={args.out}",
                f"+callbacks.interleave.block={args.block}", f"+callbacks.interleave.record_losses={args.compare}",
                f"hydra.run.dir={args.run_dir}"]
    cli()
    record = json.loads(Path(args.out).read_text())
    record.update(batch=describe_batch(args.child, cfg), precision=str(cfg.trainer.precision))
    Path(args.out).write_text(json.dumps(record))
    return 0


def run_once(args: argparse.Namespace, system: str, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True)
    out = run_dir / "paired.json"
    steps, block = args.steps or STEPS[system], args.block or BLOCK[system]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", system, "--steps", str(steps),
           "--block", str(block), "--warmup", str(args.warmup), "--compare", str(args.compare), "--out", str(out),
           "--run-dir", str(run_dir / "launcher"), "--", *system_overrides(args, system)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))}
    log = run_dir / "console.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{system} paired run failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    record = json.loads(out.read_text())
    record["block"] = block
    return record


# ---------------------------------------------------------------- statistics
def summarize(record: dict, warmup: int) -> dict:
    """Median step time of each path after the warm-up, their ratio, and the ratios of each block pair."""
    block = record["block"]
    launcher, plain = record["launcher"][warmup:], record["plain"][warmup:]
    if not launcher or not plain:
        raise SystemExit(f"no timed steps after a warm-up of {warmup}: raise --steps")
    first = -(-warmup // block) * block  # the first whole block after the warm-up
    pairs = [statistics.median(record["launcher"][i:i + block]) / statistics.median(record["plain"][i:i + block])
             for i in range(first, min(len(record["launcher"]), len(record["plain"])) - block + 1, block)]
    a, b = statistics.median(launcher), statistics.median(plain)
    return {"launcher": a, "plain": b, "ratio": a / b, "pairs": pairs, "timed": min(len(launcher), len(plain))}


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def bench_system(args: argparse.Namespace, system: str, workdir: Path) -> dict:
    runs = []
    for r in range(args.runs):
        record = run_once(args, system, workdir / f"{system}-{r}")
        s = summarize(record, args.warmup)
        s["loss_diff"] = max_loss_diff({"losses": record["losses"]["launcher"]}, {"losses": record["losses"]["plain"]})
        s.update(block=record["block"], batch=record["batch"], precision=record["precision"])
        lo, hi = quartiles(s["pairs"])
        print(f"  {system} run {r + 1}: launcher {1e3 * s['launcher']:.2f} / plain {1e3 * s['plain']:.2f} ms/step "
              f"= {s['ratio']:.3f}; block pairs {lo:.3f}-{hi:.3f} (p25-p75 of {len(s['pairs'])})",
              file=sys.stderr, flush=True)
        runs.append(s)
    overrides = system_overrides(args, system)
    return {
        "experiment": next(o for o in overrides if o.startswith("experiment=")).split("=", 1)[1],
        "precision": runs[0]["precision"], "batch": runs[0]["batch"], "timed": runs[0]["timed"],
        "block": runs[0]["block"], "launcher": statistics.median(s["launcher"] for s in runs),
        "plain": statistics.median(s["plain"] for s in runs), "ratio": statistics.median(s["ratio"] for s in runs),
        "ratios": [s["ratio"] for s in runs], "pairs": quartiles([p for s in runs for p in s["pairs"]]),
        "loss_diff": max(s["loss_diff"] for s in runs),
    }


def print_table(results: dict[str, dict], runs: int) -> None:
    print(TABLE_HEADER)
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for system, r in results.items():
        print(f"| {system} | {r['experiment']} | {r['precision']} | {r['batch']} | {r['timed']} x {runs} "
              f"| {r['block']} | {1e3 * r['launcher']:.2f} | {1e3 * r['plain']:.2f} | **{r['ratio']:.3f}** "
              f"| {r['pairs'][0]:.3f}-{r['pairs'][1]:.3f} | {r['loss_diff']:.2e} |")
    print()
    for system, r in results.items():
        print(f"{system}: launcher / plain per run " + ", ".join(f"{x:.3f}" for x in r["ratios"]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    protocol = (f"one process per run, launcher and plain loop alternating every block of steps, {args.runs} runs, "
                f"{args.warmup} warm-up steps of each path, median step time")
    results = run_systems(args, bench_system, "aigc-paired-", protocol)
    print_table(results, args.runs)
    return verdict(results, args.started)

if __name__ == "__main__":
    sys.exit(main())
