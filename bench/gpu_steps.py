"""Each system's preset for a fixed number of training steps on one CUDA GPU: step time, samples or tokens/s,
model-FLOPs utilisation (MFU) and peak GPU memory. Started by bench/gpu.sh (which adds the time limit).

    bench/gpu.sh                                  # gan_mnist, mlm_pydocs, seq2seq_en_fr in bf16-mixed (< 8 min)
    bench/gpu.sh --steps 500 --systems mlm        # more steps, one system
    bench/gpu.sh --callbacks                      # with the launcher's default callbacks and TensorBoard logging
    bench/gpu.sh --cpu                            # tiny configs on the CPU: a smoke test of this script

Per system: the preset's data module and system (``instantiate`` of the composed config, as the launcher does)
trained by a Lightning ``Trainer`` from the preset's trainer config with ``accelerator=gpu, devices=1``,
``--precision`` (auto: bf16-mixed on a GPU with native bf16), ``max_steps = --warmup + --steps``, no validation,
no sanity check, no checkpoints, no logger and no progress bar (``--callbacks``: the preset's callbacks but
checkpointing, and TensorBoard into a temporary dir, i.e. what ``python -m aigc_lab`` adds). The clock starts at
the first batch after the warm-up and stops at the end of the last step, each after ``torch.cuda.synchronize()``;
the step time is the mean over the timed steps. Batches of the timed steps are kept and counted after training, so that
counting adds no host-device synchronisation to the timed steps (images as meta tensors: no memory; token
batches as they are: ~100 kB each, within the peak memory).

Data: the preset's files under ``$AIGC_DATA_DIR`` (``paths.data_dir``) when they exist ("real"), else synthetic
data of the same form written to a temporary dir ("synthetic"): random 28x28 MNIST-format digits, and for the
text systems sentences of made-up words drawn with Zipf frequencies (a target "language" that maps each word to
another); the tokenizers are trained on those as on real data. The table says which.

Columns: samples/s (images, sequences or sentence pairs); tokens/s (masked LM: non-pad input tokens; seq2seq:
non-pad target tokens, as ``callbacks/throughput.py`` counts them); model TFLOP/s and MFU = model FLOP/s /
the device's dense peak at that precision (``callbacks/throughput.py``: ``DENSE_PEAKS`` for H100/H200/A100,
else Lightning's ``get_available_flops``; ``--peak-flops`` to set it, e.g. for a CPU); peak memory =
``torch.cuda.max_memory_allocated`` (on the CPU: peak RSS of the process while that system ran).

Model FLOPs of one training step (forward + backward = 3 x forward; a multiply-add = 2 FLOPs), from
``callbacks/throughput.py``:
- masked LM: ``tokens * (6 N + 12 L d T) + masked * 6 V d`` (N: the blocks' parameters, L layers, width d,
  padded length T, vocabulary V; the output projection runs at the masked positions only);
- seq2seq: ``src_tokens * (6 N_enc + 12 L_enc d S) + tgt_tokens * (6 N_dec + 12 L_dec d (T + S) + 6 V d)``;
- GAN: counted by torch's FlopCounterMode on meta-device copies of G and D for one batch: ``n_critic``
  discriminator steps (forward + backward on real and fake), ``n_critic - 1`` extra generator forwards and the
  generator step (G and D forward, backward through both).
Embedding lookups, normalisation, activations, the optimizer and the EMA count 0: MFU counts model FLOPs only.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import random
import shlex
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overhead import for_system

SYSTEMS = ("gan", "mlm", "seq2seq")
PRESETS = {"gan": "gan_mnist", "mlm": "mlm_pydocs", "seq2seq": "seq2seq_en_fr"}
# --cpu: the sizes of tests/runs.py (and bench/overhead.py --tiny)
TINY = {
    "gan": ("experiment=gan_mnist", "data.batch_size=16", "model.net.g_width=8", "model.net.d_width=8"),
    "mlm": ("experiment=mlm_tiny", "data.batch_size=8"),
    "seq2seq": ("experiment=seq2seq_synthetic", "data.synthetic_train_size=400", "data.max_tokens=512",
                "model.net.d_model=32", "model.net.n_enc_layers=1", "model.net.n_dec_layers=1", "model.net.n_heads=2"),
}
TABLE_HEADER = ("| system | experiment | data | precision | batch | step ms | samples/s | tokens/s | model TFLOP/s "
                "| MFU | peak memory GiB |")
NO_GPU = ("error: no CUDA GPU: torch.cuda.is_available() is False (torch {torch}, CUDA build {cuda}); run this "
          "on a machine with a CUDA GPU, or pass --cpu for the CPU smoke test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every system, or 'SYSTEM:key=value'")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--steps", type=int, default=None, help="timed steps per system (default 200; --cpu: 6)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20; --cpu: 2)")
    p.add_argument("--precision", default="auto", help="trainer.precision; auto: as the launcher resolves it")
    p.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s for MFU (default: the table)")
    p.add_argument("--callbacks", action="store_true",
                   help="add the launcher's default callbacks (not checkpointing) and TensorBoard logging")
    p.add_argument("--synthetic", action="store_true", help="synthetic data even where the real files exist")
    p.add_argument("--cpu", action="store_true", help="tiny configs on the CPU: tests the script without a GPU")
    args = p.parse_args(argv)
    args.steps = args.steps or (6 if args.cpu else 200)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.cpu else 20)
    if args.steps < 1 or args.warmup < 1:
        p.error("--steps and --warmup must be >= 1")
    return args


# ---------------------------------------------------------------- synthetic data, where the real files are absent
def write_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random 28x28 uint8 digits and labels in torchvision's MNIST layout under ``root/mnist``; returns root."""
    import numpy as np

    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = (rng.random((n, 28, 28)) > 0.8).astype(np.uint8) * 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        labels = rng.integers(0, 10, n).astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


class MadeUpLanguage:
    """Words of 2-9 letters with Zipf frequencies; ``translate`` maps each word to a fixed other word."""

    def __init__(self, n_words: int = 6000, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.words = ["".join(self.rng.choices(letters, k=self.rng.randint(2, 9))) for _ in range(n_words)]
        self.weights = [1.0 / (rank + 1) for rank in range(n_words)]
        self.other = dict(zip(self.words, self.rng.sample(self.words, n_words)))

    def sentence(self, low: int, high: int) -> str:
        words = self.rng.choices(self.words, self.weights, k=self.rng.randint(low, high))
        return " ".join(words).capitalize() + "."

    def translate(self, sentence: str) -> str:
        return " ".join(self.other.get(w, w) for w in sentence.rstrip(".").lower().split()).capitalize() + "."


def write_text(root: Path, lines: dict[str, int]) -> dict[str, Path]:
    lang, out = MadeUpLanguage(), {}
    root.mkdir(parents=True, exist_ok=True)
    for split, n in lines.items():
        out[split] = root / f"{split}.txt"
        out[split].write_text("\n".join(lang.sentence(8, 60) for _ in range(n)) + "\n", encoding="utf-8")
    return out


def write_pairs(root: Path, pairs: dict[str, int]) -> dict[str, Path]:
    lang, out = MadeUpLanguage(seed=1), {}
    root.mkdir(parents=True, exist_ok=True)
    for split, n in pairs.items():
        out[split] = root / f"{split}.tsv"
        sources = [lang.sentence(2, 20) for _ in range(n)]
        out[split].write_text("\n".join(f"{s}\t{lang.translate(s)}" for s in sources) + "\n", encoding="utf-8")
    return out


def data_overrides(system: str, cfg: Any, tmp: Path, tiny: bool, force_synthetic: bool) -> tuple[list[str], str]:
    """(overrides that point the data module at synthetic data where the real files are absent, which data)."""
    if system == "gan":
        raw = Path(cfg.data.data_dir).expanduser() / "mnist" / "MNIST" / "raw"
        images = ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")
        if not force_synthetic and any((raw / f).exists() for f in images):
            return [], "real"
        root = write_mnist(tmp / "synthetic", *((600, 100) if tiny else (60_000, 10_000)))
        return [f"data.data_dir={root}", "data.download=false"], "synthetic"
    if system == "mlm":
        if not force_synthetic and all(Path(str(cfg.data[k])).is_file() for k in ("train_files", "val_files")):
            return [], "real"
        files = write_text(tmp / "text", {"train": 300, "val": 60} if tiny else {"train": 40_000, "val": 500})
        return [f"data.train_files={files['train']}", f"data.val_files={files['val']}", "data.test_files=null"], \
            "synthetic"
    if cfg.data.task == "synthetic":
        return [], "synthetic (the built-in reversal task)"
    if not force_synthetic and all(Path(str(cfg.data[k])).is_file() for k in ("train_file", "val_file")):
        return [], "real"
    files = write_pairs(tmp / "pairs", {"train": 400, "val": 40} if tiny else {"train": 60_000, "val": 500})
    return [f"data.train_file={files['train']}", f"data.val_file={files['val']}", "data.test_file=null"], "synthetic"


# ---------------------------------------------------------------- timing
@dataclass
class Window:
    """The timed steps: seconds between the synchronised clocks, and their batches (counted afterwards)."""

    seconds: float
    batches: list[Any]


def step_window(warmup: int, steps: int):
    """A callback that times steps warmup .. warmup + steps - 1 and keeps their batches."""
    import lightning as L
    import torch

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.start = self.end = 0.0
            self.batches: list[Any] = []
            self.seen = 0

        def _sync(self, trainer: L.Trainer) -> None:
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.seen == warmup:
                self._sync(trainer)
                self.start = time.perf_counter()
            if self.seen >= warmup:
                self.batches.append(lightweight(batch))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.seen += 1
            if self.seen == warmup + steps:
                self._sync(trainer)
                self.end = time.perf_counter()

        def window(self) -> Window:
            if self.seen < warmup + steps:
                raise RuntimeError(f"only {self.seen} of {warmup + steps} steps ran (too few batches for the steps?)")
            return Window(self.end - self.start, self.batches)

    return Clock()


def lightweight(batch: Any) -> Any:
    """What counting needs of a batch, without a copy or a sync: image tensors become meta tensors of the same
    shape (the GAN's FLOPs are measured on meta copies anyway); token batches (a few hundred kB) stay as they are."""
    if isinstance(batch, (tuple, list)):
        images, labels = batch
        return images.to("meta"), labels
    return batch


# ---------------------------------------------------------------- one system
def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from aigc_lab.utils.hardware import resolve_auto
    from aigc_lab.utils.paths import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    resolve_auto(cfg)  # `auto` precision / channels_last / fused: as the launcher resolves them on this machine
    return cfg


def system_overrides(args: argparse.Namespace, system: str) -> list[str]:
    base = list(TINY[system]) if args.cpu else [f"experiment={PRESETS[system]}"]
    device = "cpu" if args.cpu else "gpu"
    base += [f"trainer.accelerator={device}", "trainer.devices=1", f"trainer.precision={args.precision}",
             f"trainer.max_steps={args.warmup + args.steps}", "trainer.max_epochs=-1", "++trainer.limit_val_batches=0",
             "++trainer.num_sanity_val_steps=0", "++trainer.limit_train_batches=null", "optimized_metric=null",
             f"paths.output_dir={args.tmp}"]
    if system == "gan":
        base.append("model.fid_features=none")  # the FID network serves validation only
    base.extend(for_system(args.overrides, system))
    return base


def run_system(args: argparse.Namespace, system: str) -> dict[str, Any]:
    import torch
    from hydra.utils import instantiate
    from lightning.fabric.utilities.throughput import get_available_flops
    from lightning.pytorch.callbacks import ModelCheckpoint
    from step_clock import peak_memory_bytes, reset_peak_memory

    from aigc_lab.callbacks import throughput as tp

    overrides = system_overrides(args, system)
    extra, source = data_overrides(system, compose(overrides), args.tmp, args.cpu, args.synthetic)
    cfg = compose([*overrides, *extra])
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    if cfg.get("seed") is not None:
        import lightning as L

        L.seed_everything(cfg.seed, verbose=False)
    reset_peak_memory(device)
    data, system_module = instantiate(cfg.data), instantiate(cfg.model)
    clock = step_window(args.warmup, args.steps)
    callbacks, loggers = [clock], []
    if args.callbacks:  # what the launcher adds, checkpointing aside
        made = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
        callbacks += [c for c in made if not isinstance(c, ModelCheckpoint)]
        loggers = [instantiate(c, save_dir=str(args.tmp / system / "tensorboard"))
                   for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_checkpointing=False,
                          enable_progress_bar=args.callbacks, enable_model_summary=args.callbacks)
    trainer.fit(system_module, datamodule=data)
    window = clock.window()
    peak = peak_memory_bytes(device)
    count_samples, count_tokens, count_flops = tp.counters(system_module)
    samples = sum(count_samples(b) for b in window.batches)
    tokens = sum(count_tokens(b) for b in window.batches) if count_tokens else None
    flops = sum(count_flops(b) or 0 for b in window.batches)
    precision = str(cfg.trainer.precision)  # resolved from `auto` by compose()
    available = args.peak_flops or tp.dense_peak(device, precision)
    if available is None and device.type == "cuda":
        available = get_available_flops(device, torch.bfloat16 if "bf16" in precision else torch.float32)
    result = {
        "experiment": str(overrides[0]).split("=", 1)[1], "data": source, "precision": precision,
        "batch": describe_batch(system, cfg), "step_ms": 1e3 * window.seconds / args.steps,
        "samples_s": samples / window.seconds, "tokens_s": tokens / window.seconds if tokens is not None else None,
        "tflops": flops / window.seconds / 1e12, "mfu": flops / window.seconds / available if available else None,
        "peak_gib": peak / 2**30,
    }
    del trainer, system_module, data, window, clock
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def describe_batch(system: str, cfg: Any) -> str:
    if system == "gan":
        return f"{cfg.data.batch_size} images"
    if system == "mlm":
        return f"{cfg.data.batch_size} x {cfg.data.block_size} tokens"
    return f"<= {cfg.data.max_tokens} tokens"


def row(system: str, r: dict[str, Any]) -> str:
    tokens = f"{r['tokens_s']:,.0f}" if r["tokens_s"] is not None else "—"
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "—"
    return (f"| {system} | {r['experiment']} | {r['data']} | {r['precision']} | {r['batch']} | {r['step_ms']:.2f} "
            f"| {r['samples_s']:,.0f} | {tokens} | {r['tflops']:.3f} | {mfu} | {r['peak_gib']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch  # before anything heavier: no GPU -> one line and out

    if not args.cpu and not torch.cuda.is_available():
        print(NO_GPU.format(torch=torch.__version__, cuda=torch.version.cuda), file=sys.stderr)
        return 1
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_clock, when imported as a module
    import lightning  # noqa: F401  (it sets its loggers to INFO on import: quiet them after)

    for name in ("lightning.pytorch", "lightning.fabric"):  # the table only: no "GPU available" or tips between rows
        logging.getLogger(name).setLevel(logging.WARNING)
    device = "CPU (tiny configs)" if args.cpu else torch.cuda.get_device_name(0)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"device: {device}; torch {torch.__version__} (CUDA {torch.version.cuda}), python "
          f"{platform.python_version()}, AIGC_DATA_DIR={os.environ.get('AIGC_DATA_DIR', '(unset: ./data)')}")
    from aigc_lab.utils.hardware import machine_line

    print(machine_line())
    print(f"protocol: {args.warmup} warm-up + {args.steps} timed steps per system, "
          f"{'launcher callbacks + TensorBoard' if args.callbacks else 'no logger, no callbacks'}, mean step time\n")
    print(TABLE_HEADER)
    print("|---" * (TABLE_HEADER.count(" | ") + 1) + "|")
    with tempfile.TemporaryDirectory(prefix="aigc-gpu-") as tmp:
        args.tmp = Path(tmp)
        for system in args.systems:
            print(row(system, run_system(args, system)), flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
