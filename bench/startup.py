"""Time from the command to the first training step, and what it is spent on, per system.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/startup.py                 # the three presets, 4 runs each
    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/startup.py --system mlm --runs 5
    .venv/bin/python bench/startup.py --tiny --system seq2seq                       # seconds: a smoke test

Each run is a fresh ``python bench/startup_probe.py <overrides>``: the real launcher (``aigc_lab.__main__``)
with timestamps at its phase boundaries (see startup_probe.py), stopped at the first training batch. The
command's clock starts just before the subprocess is spawned. The first run of each system is made under
``python -X importtime``: its imports, summed per top-level package (each module's own time, so the rows add
up to the import total), make the second table, with the module that first imported each package ("run
time" = imported inside a function, e.g. ``train()``'s lazy ``import lightning``). The phase table is the
median of the other runs (importtime inflates imports); with ``--runs 1`` it comes from that one run, marked.

The presets run as a user runs them: the sanity check and the FID network (cached in ``$AIGC_CACHE_DIR``) are
part of the startup. The StartupTimer callback's ``perf/time_to_first_step_s`` (from the ``aigc_lab`` import,
so without the interpreter start and a few imports) is shown beside it.

Hydra overrides after the options apply to every system, or to one with a prefix: ``mlm:data.batch_size=16``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from overhead import PRESETS, SYSTEMS, TINY, for_system

BENCH = Path(__file__).resolve().parent
TINY_EXTRA = {"gan": ("model.fid_features=none",)}  # no FID network to train first
PHASE_HEADER_START = "| phase |"
IMPORT_HEADER_START = "| package (imports, own time) |"
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every system, or 'SYSTEM:key=value'")
    p.add_argument("--system", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--runs", type=int, default=4, help="runs per system; the first is under -X importtime")
    p.add_argument("--top", type=int, default=14, help="packages shown in the import table")
    p.add_argument("--tiny", action="store_true", help="tiny configs (tests/runs.py sizes), 1 run per system")
    p.add_argument("--workdir", default=None, help="run dirs (default: a temporary dir, removed)")
    args = p.parse_args(argv)
    if args.tiny and "--runs" not in {a.split("=", 1)[0] for a in (argv if argv is not None else sys.argv[1:])}:
        args.runs = 1
    if args.runs < 1:
        p.error("--runs must be >= 1")
    return args


def system_overrides(args: argparse.Namespace, system: str) -> list[str]:
    out = [*TINY[system], *TINY_EXTRA.get(system, ())] if args.tiny else [PRESETS[system]]
    out.extend(for_system(args.overrides, system))
    return out


# ---------------------------------------------------------------- one probe run
def probe(overrides: list[str], run_dir: Path, importtime: bool) -> tuple[dict, str]:
    """One launcher start in a fresh process: (its marks, its -X importtime report or "")."""
    run_dir.mkdir(parents=True)
    out = run_dir / "marks.json"
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), str(BENCH / "startup_probe.py"),
           *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "STARTUP_PROBE_OUT": str(out)}
    with open(run_dir / "stdout.log", "w") as stdout, open(run_dir / "stderr.log", "w") as stderr:
        env["STARTUP_PROBE_T0"] = repr(time.clock_gettime(time.CLOCK_MONOTONIC))
        proc = subprocess.run(cmd, stdout=stdout, stderr=stderr, env=env)
    errors = (run_dir / "stderr.log").read_text(errors="replace")
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join(line for line in errors.splitlines() if not line.startswith("import time:"))[-3000:]
        raise SystemExit(f"startup probe failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return json.loads(out.read_text()), errors if importtime else ""


def phases(record: dict) -> dict[str, float]:
    """label -> seconds of each interval, in order; plus the total from the command."""
    times = [record["t0"]] + [t for _, t in record["marks"]]
    out = {label: b - a for (label, _), a, b in zip(record["marks"], times, times[1:])}
    out["total"] = times[-1] - times[0]
    return out


# ---------------------------------------------------------------- -X importtime
def import_table(report: str) -> tuple[Counter, dict[str, str], float]:
    """(own seconds per top-level package, who first imported each, total import seconds) of a report."""
    lines = [(len(m[3]) // 2, m[4], int(m[1])) for m in map(IMPORT_LINE.match, report.splitlines()) if m]
    own: Counter = Counter()
    first_by: dict[str, str] = {}
    for i, (depth, name, self_us) in enumerate(lines):
        package = name.split(".")[0]
        own[package] += self_us / 1e6
        if package in first_by:
            continue
        # the importer: the next line one level up (importtime prints a module after what it imports)
        parent = next((n for d, n, _ in lines[i + 1:] if d == depth - 1), None) if depth > 0 else None
        if parent is None or parent.split(".")[0] != package:
            first_by[package] = parent or "run time"
    return own, first_by, sum(own.values())


# ---------------------------------------------------------------- tables
def print_phase_table(results: dict[str, dict]) -> None:
    labels: list[str] = []  # every system's phases, in order (a phase only some systems have goes after its
    for r in results.values():  # predecessor in those)
        previous = -1
        for label in r["phases"]:
            if label == "total":
                continue
            if label not in labels:
                labels.insert(previous + 1, label)
            previous = labels.index(label)
    print(f"{PHASE_HEADER_START} {' | '.join(results)} |")
    print("|---" * (len(results) + 1) + "|")
    for label in labels:
        cells = [f"{r['phases'][label]:.2f}" if label in r["phases"] else "—" for r in results.values()]
        print(f"| {label} | {' | '.join(cells)} |")
    totals = [f"**{r['phases']['total']:.2f}**" for r in results.values()]
    print(f"| **command -> first training step** | {' | '.join(totals)} |")
    timer = [f"{r['timer']:.2f}" if r["timer"] is not None else "—" for r in results.values()]
    print(f"| StartupTimer perf/time_to_first_step_s (from the aigc_lab import) | {' | '.join(timer)} |")


def print_import_table(results: dict[str, dict], top: int) -> None:
    packages = Counter()
    for r in results.values():
        for package, seconds in r["imports"].items():
            packages[package] = max(packages[package], seconds)
    shown = [p for p, _ in packages.most_common(top)]
    print(f"{IMPORT_HEADER_START} {' | '.join(f'{s} s' for s in results)} | first imported by |")
    print("|---" * (len(results) + 2) + "|")
    for package in shown:
        cells = [f"{r['imports'].get(package, 0.0):.3f}" for r in results.values()]
        by = next((r["first_by"][package] for r in results.values() if package in r["first_by"]), "")
        print(f"| {package} | {' | '.join(cells)} | {by} |")
    rest = [sum(s for p, s in r["imports"].items() if p not in shown) for r in results.values()]
    print(f"| other ({len(packages) - len(shown)} packages) | {' | '.join(f'{s:.3f}' for s in rest)} | |")
    totals = [f"**{r['import_total']:.3f}**" for r in results.values()]
    print(f"| **all imports** | {' | '.join(totals)} | |")


# ---------------------------------------------------------------- main
def bench_system(args: argparse.Namespace, system: str, workdir: Path) -> dict:
    overrides = system_overrides(args, system)
    records, report = [], ""
    for r in range(args.runs):
        record, text = probe(overrides, workdir / f"{system}-{r}", importtime=r == 0)
        report = report or text
        records.append(record)
        total = phases(record)["total"]
        print(f"  {system} run {r + 1}{' (-X importtime)' if r == 0 else ''}: {total:.2f} s to the first step",
              file=sys.stderr, flush=True)
    timed = records[1:] or records  # --runs 1: the importtime run is all there is
    per_label: dict[str, list[float]] = defaultdict(list)
    for record in timed:
        for label, seconds in phases(record).items():
            per_label[label].append(seconds)
    own, first_by, total = import_table(report)
    timers = [r["startup_timer_s"] for r in timed if r.get("startup_timer_s") is not None]
    return {"phases": {label: statistics.median(v) for label, v in per_label.items()},
            "timer": statistics.median(timers) if timers else None, "imports": own, "first_by": first_by,
            "import_total": total, "importtime_only": len(records) == 1}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="aigc-startup-"))
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "AIGC_DATA_DIR") if k in os.environ)
    print(f"command: {(env + ' ') if env else ''}{shlex.join([sys.executable, *sys.argv])}")
    from aigc_lab.utils.hardware import machine_line

    print(machine_line())
    try:
        results = {system: bench_system(args, system, workdir) for system in args.system}
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    names = {s: (TINY[s][0] if args.tiny else PRESETS[s]).split("=", 1)[1] for s in results}
    results = {names[s]: r for s, r in results.items()}
    inflated = any(r["importtime_only"] for r in results.values())
    print(f"\nseconds, median of {max(args.runs - 1, 1)} run(s) per system"
          f"{' (the -X importtime run: imports inflated)' if inflated else ''}\n")
    print_phase_table(results)
    print("\nimports before the first training step (-X importtime, own time per top-level package, seconds)\n")
    print_import_table(results, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
