"""GAN training speed per option on this machine: fp32 vs bf16-mixed, channels_last off/on, and with flags
torch.compile and the foreach/fused Adam kernels; peak memory of each.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/gan_speed.py [--steps 60] [--rounds 3]
    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/gan_speed.py --compile --optim for-loop foreach
    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/gan_speed.py --precisions 32-true   # no native bf16
    .venv/bin/python bench/gan_speed.py --tiny        # seconds: tiny networks, a smoke test

Each variant trains the preset's system (experiment=gan_mnist's model and batch size, FID off) with
Lightning for --steps batches after --warmup warm-up batches; variants alternate for --rounds rounds and
the median steps/s is reported, with the ratio to fp32. Variants: each of ``--precisions`` without and with
channels_last, with fused Adam; ``--optim for-loop foreach``: channels_last with Adam's for-loop kernel (torch's
default on a CPU) or its foreach kernel; ``--compile``: channels_last with ``torch.compile`` of the generator
and the discriminator. Compile time = the warm-up's wall time
minus as many steady steps (the first steps compile; the D step and the G step, with D's weights frozen, are
separate graphs). Peak memory: the process's peak RSS during the variant's fit (CUDA max allocated on a GPU),
median over rounds. Also reported: the time to draw one batch from the in-memory MNIST loader, as a share of a
training step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from step_clock import peak_memory_bytes, reset_peak_memory

from aigc_lab.utils.hardware import machine_line, resolve_auto
from aigc_lab.utils.paths import conf_dir

TINY = ("data.batch_size=16", "model.net.g_width=8", "model.net.d_width=8")  # the sizes of tests/runs.py
TABLE_HEADER = ("| precision | channels_last | Adam kernel | compiled | steps/s | images/s | vs fp32 | compile s "
                "| peak memory MB |")


@dataclass(frozen=True)
class Variant:
    precision: str
    channels_last: bool
    optim: str = "fused"  # Adam's kernel: the preset's fused, for-loop or foreach
    compiled: bool = False


def variants(args: argparse.Namespace) -> list[Variant]:
    """fp32 first (the baseline of the ratios); each precision without and with channels_last (fused Adam), then
    the --optim kernels and --compile on channels_last."""
    out = [Variant(p, cl) for p in args.precisions for cl in (False, True)]
    out += [Variant(p, True, optim) for p in args.precisions for optim in args.optim if optim != "fused"]
    if args.compile:
        out += [Variant(p, True, compiled=True) for p in args.precisions]
    return out


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.fit_start, self.start, self.end = warmup, 0.0, 0.0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()


def preset(overrides: list[str]):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=gan_mnist", "paths.output_dir=/tmp", *overrides])
    resolve_auto(cfg)
    return cfg


def optim_overrides(optim: str) -> list[str]:
    """Overrides that select Adam's kernel for both networks (``fused`` is the preset's)."""
    if optim == "fused":
        return [f"model.optimizer_{net}.fused=true" for net in ("g", "d")]
    foreach = "true" if optim == "foreach" else "false"
    return [o for net in ("g", "d") for o in (f"model.optimizer_{net}.fused=false",
                                              f"+model.optimizer_{net}.foreach={foreach}")]


@dataclass
class Measured:
    steps_per_s: float
    compile_s: float  # warm-up time beyond as many steady steps (0 for eager, up to noise)
    peak_bytes: int


def measure(v: Variant, steps: int, warmup: int, tiny: bool) -> Measured:
    cfg = preset([f"model.channels_last={v.channels_last}", "model.fid_features=none", *optim_overrides(v.optim),
                  *(TINY if tiny else ())])
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where Trainer(accelerator="auto") trains
    system, data = instantiate(cfg.model), instantiate(cfg.data)
    if v.compiled:
        system.generator = torch.compile(system.generator)
        system.discriminator = torch.compile(system.discriminator)
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, precision=v.precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer])
    reset_peak_memory(device)
    trainer.fit(system, datamodule=data)
    step = (timer.end - timer.start) / steps
    return Measured(1.0 / step, max(0.0, timer.start - timer.fit_start - warmup * step), peak_memory_bytes(device))


def batch_seconds(tiny: bool, n: int = 200) -> float:
    data = instantiate(preset(list(TINY) if tiny else []).data)
    data.setup("fit")
    loader = data.train_dataloader()
    n = min(n, len(loader))
    batches = iter(loader)
    start = time.perf_counter()
    for _ in range(n):
        next(batches)
    return (time.perf_counter() - start) / n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants (fp32 and the preset)")
    parser.add_argument("--optim", nargs="+", choices=("fused", "for-loop", "foreach"), default=["fused"],
                        help="Adam kernels to try on the preset variant (default: the preset's fused only)")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"], choices=("32-true", "bf16-mixed"),
                        help="32-true alone on a CPU without native bf16 (bf16 is ~100x slower there)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, 3 steps, 1 round: a smoke test")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup, args.rounds = 3, 2, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: dict[Variant, list[Measured]] = {v: [] for v in variants(args)}
    for _ in range(args.rounds):
        for variant in runs:
            runs[variant].append(measure(variant, args.steps, args.warmup, args.tiny))
    batch = preset(list(TINY) if args.tiny else []).data.batch_size
    rate = {v: statistics.median(m.steps_per_s for m in ms) for v, ms in runs.items()}
    base = rate[Variant("32-true", False)]
    print(machine_line())
    print(f"batch {batch}, "
          f"median of {args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up steps")
    print(TABLE_HEADER)
    print("|---" * (TABLE_HEADER.count(" | ") + 1) + "|")
    for v, ms in runs.items():
        compile_s = f"{statistics.median(m.compile_s for m in ms):.1f}" if v.compiled else "—"
        peak = statistics.median(m.peak_bytes for m in ms) / 2**20
        print(f"| {v.precision} | {v.channels_last} | {v.optim} | {v.compiled} | {rate[v]:.1f} | {rate[v] * batch:.0f} "
              f"| {rate[v] / base:.2f}x | {compile_s} | {peak:.0f} |")
    fetch = batch_seconds(args.tiny)
    fastest = max(rate, key=rate.get)
    step = 1.0 / rate[fastest]
    print(f"batch fetch from the in-memory loader: {fetch * 1e3:.2f} ms = {100 * fetch / step:.1f}% of the fastest "
          f"variant's step ({fastest.precision}, channels_last {fastest.channels_last}: {step * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
