"""GAN training speed per option on this machine: fp32 vs bf16-mixed, channels_last off/on.

    AIGC_DATA_DIR=../shared/data .venv/bin/python bench/gan_speed.py [--steps 60] [--rounds 3]

Each variant trains the preset's system (experiment=gan_mnist's model and batch size, FID off) with
Lightning for --steps batches after 10 warm-up batches; variants alternate for --rounds rounds and
the median steps/s is reported, with the ratio to fp32. Also reported: the time to draw one batch
from the in-memory MNIST loader, as a share of a training step (data loading must not bottleneck).
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from aigc_lab.train import conf_dir

VARIANTS = (("32-true", False), ("bf16-mixed", False), ("bf16-mixed", True))


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()


def preset(overrides: list[str]):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("train", overrides=["experiment=gan_mnist", "paths.output_dir=/tmp", *overrides])


def steps_per_second(precision: str, channels_last: bool, steps: int, warmup: int = 10) -> float:
    cfg = preset([f"model.channels_last={channels_last}", "model.fid_features=none"])
    system, data = instantiate(cfg.model), instantiate(cfg.data)
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer])
    trainer.fit(system, datamodule=data)
    return steps / (timer.end - timer.start)


def batch_seconds(n: int = 200) -> float:
    data = instantiate(preset([]).data)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    start = time.perf_counter()
    for _ in range(n):
        next(loader)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[tuple[str, bool], list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            rates[variant].append(steps_per_second(*variant, steps=args.steps))
    batch = preset([]).data.batch_size
    base = statistics.median(rates[VARIANTS[0]])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print("| precision | channels_last | steps/s | images/s | vs fp32 |")
    print("|---|---|---|---|---|")
    for (precision, cl), values in rates.items():
        med = statistics.median(values)
        print(f"| {precision} | {cl} | {med:.1f} | {med * batch:.0f} | {med / base:.2f}x |")
    fetch = batch_seconds()
    step = 1.0 / statistics.median(rates[VARIANTS[-1]])
    print(f"batch fetch from the in-memory loader: {fetch * 1e3:.2f} ms = {100 * fetch / step:.1f}% of a "
          f"bf16 channels_last step ({step * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
