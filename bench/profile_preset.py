"""Where a preset's training step spends its time: Lightning hooks and torch ops, from the torch profiler.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/profile_preset.py experiment=gan_mnist [--steps 20] [overrides]

The preset is composed and built as the launcher builds it (its datamodule, system, default callbacks and
TensorBoard logger), validation and test are off, and ``--warmup`` training steps run before the torch
profiler records ``--steps`` more. Printed: (1) Lightning's hooks as timed by its ``SimpleProfiler``
over the profiled steps (data fetch, training step, optimizer step, each callback, logging), in ms per
step; (2) the torch ops with the largest self CPU time, as a share of the profiled wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from aigc_lab.utils.hardware import machine_line, resolve_auto
from aigc_lab.utils.paths import conf_dir


class Window(L.Callback):
    """Starts the torch profiler after the warm-up steps and stops it after the profiled ones."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.prof: torch.profiler.profile | None = None
        self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.prof is None:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.prof.__enter__()
            self.seconds = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.prof is not None:
            self.seconds = time.perf_counter() - self.seconds
            self.prof.__exit__(None, None, None)


def build(overrides: list[str], out: str, warmup: int, steps: int):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={out}", *overrides])
    resolve_auto(cfg)  # `auto` precision / channels_last / fused: as the launcher resolves them on this machine
    data, system = instantiate(cfg.data), instantiate(cfg.model)
    window = Window(warmup, steps)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c and "_target_" in c] + [window]
    loggers = [instantiate(c) for c in cfg.logger.values() if c and "_target_" in c]
    profiler = L.pytorch.profilers.SimpleProfiler()  # a perf_counter around every hook, nothing more
    trainer = instantiate(cfg.trainer, max_epochs=-1, max_steps=warmup + steps, limit_val_batches=0,
                          callbacks=callbacks, logger=loggers, profiler=profiler)
    return trainer, system, data, window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="profiled training steps")
    parser.add_argument("--warmup", type=int, default=10, help="training steps before profiling")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("overrides", nargs="+", help="experiment=<preset> and any overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer, system, data, window = build(args.overrides, out, args.warmup, args.steps)
        trainer.fit(system, datamodule=data)
    print(f"\n{machine_line()}")
    print(f"{args.steps} steps profiled in {window.seconds:.2f} s = {1e3 * window.seconds / args.steps:.1f} ms/step "
          f"({torch.get_num_threads()} threads)")
    print_hooks(trainer.profiler.recorded_durations, args.steps, args.rows)
    print_ops(window.prof.key_averages(), window.seconds, args.steps, args.rows)


def print_hooks(durations: dict[str, list[float]], steps: int, rows: int) -> None:
    """Per-step hooks: the mean of their last ``steps`` calls (the profiled window), in ms."""
    per_step = {name: sum(d[-steps:]) / steps for name, d in durations.items() if len(d) >= steps}
    print("\n| Lightning hook (per-step ones) | ms/step |")
    print("|---|---|")
    for name, seconds in sorted(per_step.items(), key=lambda kv: kv[1], reverse=True)[:rows]:
        print(f"| `{name[:90]}` | {1e3 * seconds:.2f} |")


def print_ops(events, seconds: float, steps: int, rows: int) -> None:
    total_us = seconds * 1e6
    print("\n| torch op | self CPU ms/step | share of wall | calls/step |")
    print("|---|---|---|---|")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]:
        print(f"| `{e.key[:70]}` | {e.self_cpu_time_total / 1e3 / steps:.2f} | "
              f"{100 * e.self_cpu_time_total / total_us:.1f}% | {e.count / steps:.1f} |")


if __name__ == "__main__":
    main()
