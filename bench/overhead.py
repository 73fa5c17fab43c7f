"""Framework overhead per system: the launcher against a hand-written PyTorch loop, same work, per step.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/overhead.py                  # gan, mlm, seq2seq presets
    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/overhead.py --system gan --steps 300 --runs 5
    .venv/bin/python bench/overhead.py --tiny mlm:data.train_files=a.txt ...          # seconds: a smoke test

For each system, two ways to train the same ``torch.nn`` modules on the same data:

(a) ``python -m aigc_lab experiment=<preset>``, the real launcher with its default callbacks (checkpointing,
    LR monitor, rich progress bar, model summary, startup timer, RNG state, throughput/MFU) and TensorBoard
    logging, validation and test off (``trainer.limit_val_batches=0 test=false``), ``trainer.max_steps=N``,
    plus one minimal callback (``bench/step_clock.py``) that takes a ``perf_counter`` at each batch start;
(b) ``bench/plain_loop.py``: the same modules built from the same composed config, the same DataLoader from
    the same data module (which owns batching and masking), the same optimizer, schedule, clipping, loss,
    precision (autocast) and channels_last choice, the same seed; a ``perf_counter`` at each batch start.

Each run is a fresh subprocess; runs alternate a, b, a, b, ...; the first ``--drop`` runs of each are
dropped (the OS file cache, the tokenizer cache), then ``--runs`` are kept. Per run, the step time is the
median of the batch-start differences after ``--warmup`` steps (fetching the next batch, the step and, in
(a), every hook and logging call); the table shows the median over runs and the ratio (a) / (b). Both paths
copy their losses to the host on the logging steps (every ``trainer.log_every_n_steps``-th, as the launcher
writes its logs) and record those of the first ``--compare``: same seed, same initial weights, batches and
noise, so the losses must agree; the table shows the largest difference.
(a)'s console output goes to a log file, as in a batch job: terminal rendering of the progress bar is not
timed. Both paths train where ``trainer.accelerator`` points (``auto``: a GPU when there is one); on a GPU the
batch-start differences are not synchronised, so only their steady-state median means something there.

Hydra overrides after the options apply to every system, or to one with a prefix: ``mlm:data.batch_size=16``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SYSTEMS = ("gan", "mlm", "seq2seq")
PRESETS = {"gan": "experiment=gan_mnist", "mlm": "experiment=mlm_pydocs", "seq2seq": "experiment=seq2seq_en_fr"}
# --tiny: the sizes of tests/runs.py (fixture data for the GAN and the masked LM, the synthetic task for seq2seq);
# every step a logging step, so that a dozen steps have losses to compare
TINY = {
    "gan": ("experiment=gan_mnist", "data.batch_size=16", "model.net.g_width=8", "model.net.d_width=8",
            "trainer.log_every_n_steps=1"),
    "mlm": ("experiment=mlm_tiny", "data.batch_size=8", "trainer.log_every_n_steps=1"),
    "seq2seq": ("experiment=seq2seq_synthetic", "data.synthetic_train_size=400", "data.synthetic_val_size=40",
                "data.synthetic_test_size=40", "data.max_tokens=512", "model.net.d_model=32",
                "model.net.n_enc_layers=1", "model.net.n_dec_layers=1", "model.net.n_heads=2",
                "trainer.log_every_n_steps=1"),
}
# Training steps only, in both paths; no run-level metric to return (nothing is validated).
COMMON = ("++trainer.limit_val_batches=0", "test=false", "optimized_metric=null")
EXTRA = {"gan": ("model.fid_features=none",)}  # the FID network serves validation only
STEPS = {"gan": 300, "mlm": 100, "seq2seq": 80}  # ~15-40 s of steps per run at the presets on 2 cores
TABLE_HEADER = ("| system | experiment | precision | batch | steps x runs | launcher ms/step | plain ms/step "
                "| launcher / plain | max abs loss diff |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every system, or 'SYSTEM:key=value'")
    p.add_argument("--system", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {STEPS})")
    p.add_argument("--warmup", type=int, default=10, help="steps not timed at the start of each run")
    p.add_argument("--runs", type=int, default=3, help="kept runs of each path (median)")
    p.add_argument("--drop", type=int, default=1, help="runs of each path dropped first")
    p.add_argument("--compare", type=int, default=5,
                   help="losses compared between the paths: those of the first N logging steps")
    p.add_argument("--precision", default=None, help="trainer.precision for both paths (default: the preset's)")
    p.add_argument("--tiny", action="store_true", help="tiny models and data, 12 steps, 1 run each, none dropped")
    p.add_argument("--concurrent", action="store_true",
                   help="run a and b of a round at the same time: a quick correctness check, timings not comparable")
    p.add_argument("--workdir", default=None, help="run dirs and step records (default: a temporary dir, removed)")
    p.add_argument("--child", choices=SYSTEMS, default=None, help=argparse.SUPPRESS)  # (b) in a subprocess
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        given = {a.split("=", 1)[0] for a in (argv if argv is not None else sys.argv[1:])}
        args.warmup = args.warmup if "--warmup" in given else 3  # an explicit flag still wins over --tiny
        args.runs = args.runs if "--runs" in given else 1
        args.drop = args.drop if "--drop" in given else 0
        args.steps = args.steps or 12
    for override in args.overrides:
        prefix = override.split(":", 1)[0] if ":" in override.split("=", 1)[0] else None
        if prefix is not None and prefix not in SYSTEMS:
            p.error(f"override {override!r}: the prefix must be one of {', '.join(SYSTEMS)}")
    return args


def steps_for(args: argparse.Namespace, system: str) -> int:
    return args.steps or STEPS[system]


def system_overrides(args: argparse.Namespace, system: str) -> list[str]:
    """Preset (or tiny) overrides, the training-only ones, --precision, then the user's for this system."""
    out = [*(TINY[system] if args.tiny else (PRESETS[system],)), *COMMON, *EXTRA.get(system, ())]
    if args.precision:
        out.append(f"trainer.precision={args.precision}")
    out.extend(for_system(args.overrides, system))
    return out


def for_system(overrides: list[str], system: str) -> list[str]:
    """The overrides that apply to ``system``: unprefixed ones, and ``SYSTEM:key=value`` ones of that system."""
    out = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if ":" in key:
            prefix, override = override.split(":", 1)
            if prefix != system:
                continue
        out.append(override)
    return out


# ---------------------------------------------------------------- one run of each path
def launcher_command(overrides: list[str], steps: int, record: int, out: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "aigc_lab", *overrides, f"trainer.max_steps={steps}",
            "+callbacks.step_clock._target_=step_clock.StepClock", f"+callbacks.step_clock.out={out}",
            f"+callbacks.step_clock.record_losses={record}", f"hydra.run.dir={run_dir}"]


def plain_command(system: str, overrides: list[str], steps: int, record: int, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", system, "--steps", str(steps),
            "--compare", str(record), "--out", str(out), "--", *overrides]


def run_once(kind: str, system: str, overrides: list[str], args: argparse.Namespace, run_dir: Path) -> dict:
    """One fresh subprocess of path ``kind`` ("launcher" or "plain"); its step record."""
    run_dir.mkdir(parents=True)
    out = run_dir / "steps.json"
    if kind == "launcher":
        cmd = launcher_command(overrides, steps_for(args, system), args.compare, out, run_dir)
    else:
        cmd = plain_command(system, overrides, steps_for(args, system), args.compare, out)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))}
    log = run_dir / "console.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{system} {kind} run failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return json.loads(out.read_text())


def step_seconds(record: dict, warmup: int) -> list[float]:
    """Batch-start differences after ``warmup`` steps: the time of each step, its next batch's fetch included."""
    starts = record["starts"][warmup:]
    return [b - a for a, b in zip(starts, starts[1:])]


def max_loss_diff(a: dict, b: dict) -> float:
    """Largest |loss_a - loss_b| over the recorded keys and steps (inf if the records do not match up)."""
    if not a["losses"] or set(a["losses"]) != set(b["losses"]):
        return float("inf")
    diffs = [abs(x - y) for key in a["losses"] for x, y in zip(a["losses"][key], b["losses"][key], strict=True)]
    return max(diffs)


# ---------------------------------------------------------------- one system
def run_round(args: argparse.Namespace, system: str, overrides: list[str], workdir: Path, r: int) -> dict[str, dict]:
    """One launcher run, then one plain run (or both at once with --concurrent: a smoke test, not a timing)."""
    jobs = {kind: (kind, system, overrides, args, workdir / f"{system}-{r}-{kind}") for kind in ("launcher", "plain")}
    if not args.concurrent:
        return {kind: run_once(*job) for kind, job in jobs.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {kind: pool.submit(run_once, *job) for kind, job in jobs.items()}
        return {kind: future.result() for kind, future in futures.items()}


def bench_system(args: argparse.Namespace, system: str, workdir: Path) -> dict:
    overrides = system_overrides(args, system)
    kept: dict[str, list[dict]] = {"launcher": [], "plain": []}
    for r in range(args.drop + args.runs):
        for kind, record in run_round(args, system, overrides, workdir, r).items():  # alternating: a, b, a, b, ...
            per_step = step_seconds(record, args.warmup)
            if not per_step:
                raise SystemExit(f"{system} {kind}: {len(record['starts'])} steps ran, none after the warm-up")
            record["median_s"] = statistics.median(per_step)
            record["timed"] = len(per_step)
            dropped = " (dropped)" if r < args.drop else ""
            print(f"  {system} run {r + 1} {kind}: {1e3 * record['median_s']:.2f} ms/step over {len(per_step)} "
                  f"steps{dropped}", file=sys.stderr, flush=True)
            if r >= args.drop:
                kept[kind].append(record)
    plain = kept["plain"][0]
    return {
        "experiment": next(o for o in overrides if o.startswith("experiment=")).split("=", 1)[1],
        "precision": plain["precision"], "batch": plain["batch"], "timed": plain["timed"],
        "launcher": statistics.median(r["median_s"] for r in kept["launcher"]),
        "plain": statistics.median(r["median_s"] for r in kept["plain"]),
        "per_run": {kind: [r["median_s"] for r in records] for kind, records in kept.items()},
        "loss_diff": max(max_loss_diff(a, b) for a in kept["launcher"] for b in kept["plain"]),
        "compared": len(next(iter(plain["losses"].values()), [])),
    }


def print_table(results: dict[str, dict], runs: int) -> None:
    print(TABLE_HEADER)
    print("|---|---|---|---|---|---|---|---|---|")
    for system, r in results.items():
        print(f"| {system} | {r['experiment']} | {r['precision']} | {r['batch']} | {r['timed']} x {runs} "
              f"| {1e3 * r['launcher']:.2f} | {1e3 * r['plain']:.2f} | {r['launcher'] / r['plain']:.3f} "
              f"| {r['loss_diff']:.2e} |")
    print()
    for system, r in results.items():
        runs_ms = "; ".join(f"{kind} " + ", ".join(f"{1e3 * s:.2f}" for s in values)
                            for kind, values in r["per_run"].items())
        print(f"{system} per-run medians (ms/step): {runs_ms}; losses compared over the first {r['compared']} "
              "logging steps")


# ---------------------------------------------------------------- (b) in its own process
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from aigc_lab.utils.hardware import resolve_auto
    from aigc_lab.utils.paths import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    resolve_auto(cfg)  # `auto` precision / channels_last / fused: as the launcher resolves them on this machine
    return cfg


def describe_batch(system: str, cfg) -> str:
    if system == "gan":
        return f"{cfg.data.batch_size} images"
    if system == "mlm":
        return f"{cfg.data.batch_size} x {cfg.data.block_size} tokens"
    return f"<= {cfg.data.max_tokens} tokens"


def child(args: argparse.Namespace) -> int:
    """(b): build the plain loop from the composed config, train --steps steps, write the step record."""
    from aigc_lab.utils.malloc import keep_freed_memory

    keep_freed_memory()  # as the launcher's cli() does first: a process-wide setting, not framework work
    # torch, the models and data modules: only in this process
    from plain_loop import build, run
    from step_clock import write_json

    cfg = compose([*args.overrides, f"trainer.max_steps={args.steps}"])
    record = run(build(args.child, cfg), args.steps, record_losses=args.compare,
                 every=int(cfg.trainer.log_every_n_steps))
    record.update(batch=describe_batch(args.child, cfg), precision=str(cfg.trainer.precision))
    write_json(args.out, record)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    if any(steps_for(args, s) <= args.warmup + 1 for s in args.system):
        raise SystemExit(f"--steps must exceed --warmup + 1 ({args.warmup + 1})")
    if args.concurrent:
        print("--concurrent: the two paths ran at the same time and shared the CPU: step times are not comparable")
    protocol = (f"fresh subprocess per run, a/b alternating, {args.drop} dropped + {args.runs} kept runs each, "
                f"{args.warmup} warm-up steps, median step time")
    for r in (results := run_systems(args, bench_system, "aigc-overhead-", protocol)).values():
        r["ratio"] = r["launcher"] / r["plain"]
    print_table(results, args.runs)
    return verdict(results, args.started)


def run_systems(args: argparse.Namespace, bench: Callable[[argparse.Namespace, str, Path], dict], prefix: str,
                protocol: str) -> dict[str, dict]:
    """Print the command and protocol, run ``bench`` for each system in a work dir (temporary unless --workdir)."""
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=prefix))
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "AIGC_DATA_DIR") if k in os.environ)
    print(f"command: {(env + ' ') if env else ''}{shlex.join([sys.executable, *sys.argv])}")
    print(f"protocol: {protocol}; os.cpu_count() = {os.cpu_count()}")
    from aigc_lab.utils.hardware import machine_line

    print(machine_line())
    args.started = time.perf_counter()
    try:
        results = {system: bench(args, system, workdir) for system in args.system}
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    return results


def verdict(results: dict[str, dict], started: float) -> int:
    """The closing line (losses agree? target met?); exit code 1 when the losses disagree."""
    agree = all(r["loss_diff"] <= 1e-4 for r in results.values())
    met = all(r["ratio"] <= 1.03 for r in results.values())
    print(f"losses agree (max abs diff <= 1e-4): {'yes' if agree else 'NO'}; target launcher / plain <= 1.03: "
          f"{'met' if met else 'not met'}; {time.perf_counter() - started:.0f} s in all")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
