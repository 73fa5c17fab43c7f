"""Short, deterministic runs of every preset, to show that a refactor changed no behaviour.

Each preset trains a few hundred steps in fp32 from a fixed seed, with no time budget and few validation and
test batches, and the final metrics (metrics.json: the fit's last logged values and the test's) are printed as
one JSON object. Run it on the code before and after a change and compare the two files:

    python bench/preset_fingerprint.py --out before.json        # on the old commit
    python bench/preset_fingerprint.py --out after.json         # on the new one
    python bench/preset_fingerprint.py --compare before.json after.json

The runs use $AIGC_DATA_DIR and $AIGC_CACHE_DIR as a normal launch does (the FID classifier and tokenizers are
cached there, so a second fingerprint skips them) and write their run dirs under a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = ["seed=1234", "trainer.precision=32-true", "callbacks.time_budget.minutes=null"]
PRESETS: dict[str, list[str]] = {
    "gan_mnist": ["++trainer.max_epochs=1", "++trainer.limit_train_batches=300", "++trainer.limit_val_batches=4",
                  "++trainer.limit_test_batches=4"],
    "mnist_classifier": ["++trainer.max_epochs=1", "++trainer.limit_train_batches=200",
                         "++trainer.limit_val_batches=10", "++trainer.limit_test_batches=10"],
    "mlm_tiny": [],
    "mlm_pydocs": ["++trainer.max_steps=300", "++trainer.val_check_interval=150", "++trainer.limit_val_batches=10",
                   "++trainer.limit_test_batches=10"],
    "seq2seq_synthetic": ["++trainer.max_steps=300"],
    "seq2seq_en_fr": ["++trainer.max_steps=300", "++trainer.val_check_interval=150", "++trainer.limit_val_batches=4",
                      "++trainer.limit_test_batches=4", "++model.val_decode_batches=2"],
}


def run_preset(name: str, overrides: list[str], root: Path) -> dict[str, float]:
    """Train ``name`` with the fingerprint's overrides; its metrics.json."""
    argv = [sys.executable, "-m", "aigc_lab", f"experiment={name}", *COMMON, *overrides,
            f"paths.log_dir={root}"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    (metrics,) = sorted(root.glob(f"{name}/runs/*/metrics.json"))
    return json.loads(metrics.read_text())


def compare(before: dict, after: dict, rel: float) -> int:
    """Print every metric side by side; the number of metrics that differ by more than ``rel`` (relative)."""
    differ = 0
    for preset in sorted(set(before) | set(after)):
        a, b = before.get(preset, {}), after.get(preset, {})
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            same = x is not None and y is not None and math.isclose(x, y, rel_tol=rel, abs_tol=1e-12)
            differ += not same
            print(f"{'  ' if same else '!!'} {preset:18} {key:28} {x!s:>22} {y!s:>22}")
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where to write the fingerprint (JSON)")
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--rel", type=float, default=1e-6, help="relative tolerance of --compare")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        differ = compare(before, after, args.rel)
        print(f"{differ} metric(s) differ by more than {args.rel:g} (relative)")
        raise SystemExit(1 if differ else 0)
    os.environ.setdefault("AIGC_CPU_BF16", "emulated")  # 32-true is explicit; this keeps the log quiet alike
    result = {}
    with tempfile.TemporaryDirectory(prefix="fingerprint_") as tmp:
        for name in args.presets:
            result[name] = run_preset(name, PRESETS[name], Path(tmp))
            print(f"{name}: {json.dumps(result[name])}", flush=True)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
