"""Quality of bf16-mixed against fp32 per system: the same preset, seed and step budget, two precisions.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/precision_quality.py [--systems gan mlm seq2seq]
        [--out outputs/bench_precision] [extra overrides for every run ...]

Each run is the real launcher (`python -m aigc_lab experiment=<preset> trainer.precision=<p>`) on a
shortened budget (below), so both precisions see the same batches in the same order; the table shows
the validation metric each reaches and the change from fp32. Wall times are printed too, but they only
mean something when the runs had the machine to themselves: speed is measured by bench/*_speed.py.
Extra overrides come last and win (tests/test_bench_precision.py shrinks the MLM to a tiny corpus).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# system -> (preset overrides on a shortened budget, metric reported, higher is better)
BUDGETS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    # 4 epochs (the preset's 17 with its decay over the second half); val FID on the held-out 5k images
    "gan": (("experiment=gan_mnist", "trainer.max_epochs=4"), "val/fid", False),
    # 600 steps of the preset's 3000 (cosine to zero at 600), validation at 300 and 600
    "mlm": (("experiment=mlm_pydocs", "trainer.max_steps=600", "trainer.val_check_interval=300"),
            "val/perplexity", False),
    # 600 steps of 3200 (cosine to zero at 600); validation BLEU with the preset's beam 4
    "seq2seq": (("experiment=seq2seq_en_fr", "trainer.max_steps=600", "trainer.val_check_interval=300"),
                "val/bleu", True),
}
PRECISIONS = ("32-true", "bf16-mixed")
HEADER = "| system | budget | metric | fp32 | bf16-mixed | change | fp32 wall s | bf16 wall s |"


def run(system: str, precision: str, out: Path, extra: list[str]) -> tuple[float, float]:
    """One launcher run; returns (best value of the system's metric, wall seconds)."""
    overrides, metric, higher = BUDGETS[system]
    run_dir = out / f"{system}_{precision}"
    cmd = [sys.executable, "-m", "aigc_lab", *overrides, f"trainer.precision={precision}", "test=false",
           f"hydra.run.dir={run_dir}", "print_config=false", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return float(metrics[metric]), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_precision"))
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run (e.g. the tests' tiny data)")
    args = parser.parse_args()
    rows = []
    for system in args.systems:
        (fp32, fp32_wall), (bf16, bf16_wall) = (run(system, p, args.out, args.overrides) for p in PRECISIONS)
        overrides, metric, _ = BUDGETS[system]
        budget = " ".join(o.split("=", 1)[1] if o.startswith("experiment=") else o for o in overrides)
        rows.append(f"| {system} | {budget} | {metric} | {fp32:.3f} | {bf16:.3f} | {bf16 - fp32:+.3f} | "
                    f"{fp32_wall:.0f} | {bf16_wall:.0f} |")
    from aigc_lab.utils.hardware import machine_line

    print("\n" + machine_line())
    print(HEADER + "\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
