"""Training speed and peak memory of each preset under each malloc the launcher offers (``AIGC_MALLOC``):
``mimalloc`` (the default) against ``glibc`` (glibc with aigc_lab's settings, the default before) and, with
``--variants ... system``, glibc as it comes.

Each run is the launcher's own command (``python -m aigc_lab experiment=<preset>``) for a short stretch of the
preset: ``--steps`` training steps with a validation of ``--val-batches`` batches halfway and at the end, then a
test of ``--test-batches`` batches, from a warm cache (``AIGC_CACHE_DIR``, else a temporary one: a first,
uncounted run per preset builds the tokenizer and the token shards, or trains the FID classifier). Variants
alternate within each of ``--rounds`` rounds. Per preset and variant: the median training speed (the median of
the progress log's steps/s lines after the first, which holds the warm-up) and the median peak RSS of the whole
command (the child's ``ru_maxrss`` from ``wait4``), with their ratios to the first variant's.

    AIGC_DATA_DIR=../shared/data python bench/allocators.py                  # all three presets, 2 rounds
    AIGC_DATA_DIR=../shared/data python bench/allocators.py --presets mlm_pydocs --rounds 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from aigc_lab.utils.hardware import machine_line  # noqa: E402

# How each preset gets a validation halfway through --steps: the GAN validates per epoch (an epoch of
# steps/4 batches: two optimizer steps per batch), the text systems every N steps.
HALFWAY = {
    "gan_mnist": lambda steps: [f"+trainer.limit_train_batches={steps // 4}", "trainer.max_epochs=2"],
    "mlm_pydocs": lambda steps: [f"trainer.val_check_interval={steps // 2}"],
    "seq2seq_en_fr": lambda steps: [f"trainer.val_check_interval={steps // 2}"],
}
RATE = re.compile(r"step \d+(?:/\d+)? \| ([\d.]+) steps/s")


def run(preset: str, variant: str, args: argparse.Namespace, scratch: Path) -> tuple[float, float]:
    """(median steps/s, peak RSS in GB) of one run."""
    env = {**os.environ, "AIGC_MALLOC": variant, "PROJECT_ROOT": str(scratch)}
    env.setdefault("AIGC_CACHE_DIR", str(scratch / "cache"))  # yours, if set: tokenizers, shards, FID classifier
    env.pop("LD_PRELOAD", None)
    command = [sys.executable, "-m", "aigc_lab", f"experiment={preset}", f"trainer.max_steps={args.steps}",
               "callbacks.time_budget.minutes=null", f"+trainer.limit_val_batches={args.val_batches}",
               f"+trainer.limit_test_batches={args.test_batches}", "trainer.log_every_n_steps=10",
               f"hydra.run.dir={scratch / 'run' / preset}", "print_config=false", *HALFWAY[preset](args.steps),
               *args.overrides]
    log = scratch / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{preset} under {variant}: exit {proc.returncode}\n{text[-4000:]}")
    rates = [float(r) for r in RATE.findall(text)][1:]
    if not rates:
        raise SystemExit(f"{preset} under {variant}: no progress lines in its log\n{text[-2000:]}")
    return statistics.median(rates), usage.ru_maxrss / 1e6  # ru_maxrss: KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(HALFWAY), choices=list(HALFWAY))
    parser.add_argument("--variants", nargs="+", default=["glibc", "mimalloc"],
                        choices=["mimalloc", "glibc", "system"], help="the first is the reference of the ratios")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--test-batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more overrides for every run")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    with tempfile.TemporaryDirectory(prefix="aigc_alloc_") as tmp:
        scratch = Path(tmp)
        for preset in args.presets:
            run(preset, args.variants[0], args, scratch)  # warm-up: tokenizer, token shards, FID classifier
            results: dict[str, list[tuple[float, float]]] = {v: [] for v in args.variants}
            for round_ in range(args.rounds):
                for variant in args.variants:
                    results[variant].append(run(preset, variant, args, scratch))
                    rate, peak = results[variant][-1]
                    print(f"  {preset} round {round_ + 1} {variant}: {rate:.2f} steps/s, peak {peak:.2f} GB",
                          flush=True)
            reference = [statistics.median(x[i] for x in results[args.variants[0]]) for i in (0, 1)]
            print(f"\n| {preset} | steps/s (median) | speed ratio | peak RSS (median) | RSS ratio |")
            print("|---|---|---|---|---|")
            for variant in args.variants:
                rate = statistics.median(x[0] for x in results[variant])
                peak = statistics.median(x[1] for x in results[variant])
                print(f"| {variant} | {rate:.2f} | {rate / reference[0]:.2f} | {peak:.2f} GB | "
                      f"{peak / reference[1]:.2f} |", flush=True)
            print()


if __name__ == "__main__":
    main()
