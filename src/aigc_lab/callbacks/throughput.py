"""Throughput and model-FLOPs utilisation (MFU), on top of Lightning's ``ThroughputMonitor``.

Lightning's callback does the timing, the rolling window and the logging (every ``log_every_n_steps``
training steps, on rank zero); this subclass adds what it leaves to the user, from the system's spec
(``systems/spec.py``):

- how many samples and tokens a batch holds (``count_samples``, ``count_tokens``: no tokens for images);
- the training FLOPs of each batch (``train_flops``, which ``ThroughputMonitor`` reads from the module as
  ``flops_per_batch``; each system's file gives its formula), counted once when every batch has the same
  (``flops_vary=False``); evaluation batches get none (beam search is not a training step);
- the device's peak: ``peak_flops`` when configured (FLOP/s per device, e.g. for a CPU), else the small
  table ``DENSE_PEAKS`` of dense tensor-core peaks (Lightning's own table has no entry for plain "NVIDIA
  H200" and lists its bf16 peak with sparsity, 2x the dense one), else Lightning's
  ``get_available_flops``. No known peak (e.g. CPU): no MFU, the other rates are still logged.

Logged (``<stage>/device/<name>``, stage ``train``, ``validate`` or ``test``; with several devices also
``<stage>/<name>`` summed over ranks): ``samples_per_sec``, ``batches_per_sec``, ``items_per_sec`` (tokens/s;
absent for images), ``flops_per_sec`` and ``mfu`` = achieved training FLOP/s / peak FLOP/s (train only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from aigc_lab.systems.spec import spec_of

# Dense (no sparsity) peak FLOP/s per device, from NVIDIA's data sheets. "tf32" applies to float32
# matmuls when torch allows TF32 (torch.get_float32_matmul_precision() != "highest").
DENSE_PEAKS: dict[str, dict[str, float]] = {
    "h200 nvl": {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "h200": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},
    "h100 nvl": {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "h100 pcie": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "h100": {"bf16": 989e12, "fp16": 989e12, "tf32": 495e12, "fp32": 67e12},  # SXM (HBM3)
    "a100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}


class Throughput(ThroughputMonitor):
    """Samples/s, tokens/s, FLOP/s and MFU of training (see the module docstring for the formulas)."""

    def __init__(self, window_size: int = 20, peak_flops: float | None = None, separator: str = "/") -> None:
        """``window_size``: batches in the rolling average (rates appear once it is full, at least 2);
        ``peak_flops``: the device's peak FLOP/s, overriding the table (needed for MFU on a CPU)."""
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        super().__init__(batch_size_fn=_first_len, window_size=window_size, separator=separator)
        self.peak_flops = peak_flops
        self._flops_fn: Callable[[Any], int | None] = _no_flops

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        peak = self.peak_flops or dense_peak(trainer.strategy.root_device, str(trainer.precision))
        if peak:
            self.available_flops = peak
            for throughput in self._throughputs.values():
                throughput.available_flops = peak
        self.batch_size_fn, self.length_fn, self._flops_fn = counters(pl_module)
        pl_module.flops_per_batch = None  # read by ThroughputMonitor on every batch (None: not counted)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                             ) -> None:
        if trainer.is_global_zero:  # ThroughputMonitor measures on rank zero only
            pl_module.flops_per_batch = self._flops_fn(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        pl_module.flops_per_batch = None  # decoding is not a training step: no MFU for evaluation

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        pl_module.flops_per_batch = None


def dense_peak(device: torch.device, precision: str) -> float | None:
    """The dense peak FLOP/s of a CUDA device in ``DENSE_PEAKS`` for a Lightning precision string, or None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    chip = next((key for key in DENSE_PEAKS if all(part in name for part in key.split())), None)
    if chip is None:
        return None  # ThroughputMonitor's own lookup stays in place
    if "bf16" in precision:
        dtype = "bf16"
    elif "16" in precision:
        dtype = "fp16"
    else:
        dtype = "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return DENSE_PEAKS[chip][dtype]


def counters(pl_module: L.LightningModule) -> tuple[Callable[[Any], int], Callable[[Any], int] | None,
                                                  Callable[[Any], int | None]]:
    """(samples, tokens or None, training FLOPs) of a batch, as the module's spec counts them."""
    spec = spec_of(pl_module)
    if spec is None:
        return _first_len, None, _no_flops
    tokens = (lambda batch: spec.count_tokens(pl_module, batch)) if spec.count_tokens is not None else None
    if spec.train_flops is None:
        return spec.count_samples, tokens, _no_flops
    flops = lambda batch: spec.train_flops(pl_module, batch)  # noqa: E731
    return spec.count_samples, tokens, flops if spec.flops_vary else _measured_once(flops)


def _first_len(batch: Any) -> int:
    """Samples of a batch of a LightningModule without a spec: its first element's length."""
    return len(batch[0])


def _measured_once(measure: Callable[[Any], int | None]) -> Callable[[Any], int | None]:
    """``measure`` on the first batch only (every batch has the same FLOPs)."""
    cache: list[int | None] = []

    def flops(batch: Any) -> int | None:
        if not cache:
            cache.append(measure(batch))
        return cache[0]

    return flops


def _no_flops(batch: Any) -> None:
    return None
