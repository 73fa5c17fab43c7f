"""Throughput and model-FLOPs utilisation (MFU), on top of Lightning's ``ThroughputMonitor``.

Lightning's callback does the timing, the rolling window and the logging (every ``log_every_n_steps``
training steps, on rank zero); this subclass adds what it leaves to the user:

- how many samples and tokens a batch holds, for the project's three batch types: MNIST ``(images,
  labels)`` (samples only), masked-LM dicts (tokens = non-pad ``input_ids``) and seq2seq dicts (tokens =
  non-pad target tokens, ``tgt_out``);
- the training FLOPs of each batch (``flops_per_batch``, which ``ThroughputMonitor`` reads from the
  module), from the formulas below; evaluation batches get none (beam search is not a training step);
- the device's peak: ``peak_flops`` when configured (FLOP/s per device, e.g. for a CPU), else the small
  table ``DENSE_PEAKS`` of dense tensor-core peaks (Lightning's own table has no entry for plain "NVIDIA
  H200" and lists its bf16 peak with sparsity, 2x the dense one), else Lightning's
  ``get_available_flops``. No known peak (e.g. CPU): no MFU, the other rates are still logged.

Logged (``<stage>/device/<name>``, stage ``train``, ``validate`` or ``test``; with several devices also
``<stage>/<name>`` summed over ranks): ``samples_per_sec``, ``batches_per_sec``, ``items_per_sec`` (tokens/s;
absent for images), ``flops_per_sec`` and ``mfu`` = achieved training FLOP/s / peak FLOP/s (train only).

FLOPs of one training step (forward + backward = 3 x forward, multiply-add = 2 FLOPs):

- Transformer stacks (masked LM, seq2seq), as in Kaplan et al. (2020) and PaLM (Chowdhery et al., 2022):
  per token, ``6 * N + 12 * L * d * C`` where N = the stack's non-embedding parameters, L its layers, d the
  width and C the length attended over (the attention scores and the weighted sum: 2 x 2 x C x d per
  layer forward; causal masks are not halved, as in PaLM). The tied output layer adds ``6 * V * d`` per
  predicted token. Embedding lookups count 0. Tokens are the non-pad ones, so padding lowers MFU.
    - masked LM: ``tokens * (6 N + 12 L d T) + masked * 6 V d`` (T: padded length; the vocabulary
      projection is computed at masked positions only);
    - seq2seq: ``src_tokens * (6 N_enc + 12 L_enc d S) + tgt_tokens * (6 N_dec + 12 L_dec d (T + S) + 6 V d)``
      (decoder self-attention over T, cross-attention over S).
- GAN: measured once with Lightning's ``measure_flops`` (torch's FlopCounterMode) on meta-device copies
  of the two networks (no compute, the real batch-norm statistics untouched), mirroring one training
  batch: ``n_critic`` discriminator steps (fwd + bwd on real and fake), ``n_critic - 1`` extra generator
  forwards, and the generator step (G fwd, D fwd, backward through both). The batch size is fixed
  (``drop_last``), so one measurement holds for every batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import ThroughputMonitor

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
        super().__init__(batch_size_fn=batch_size, window_size=window_size, separator=separator)
        self.peak_flops = peak_flops
        self._flops_fn: Callable[[Any], int | None] = _no_flops

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        peak = self.peak_flops or dense_peak(trainer.strategy.root_device, str(trainer.precision))
        if peak:
            self.available_flops = peak
            for throughput in self._throughputs.values():
                throughput.available_flops = peak
        self.length_fn = token_counter(pl_module)
        self._flops_fn = flops_counter(pl_module)
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


# ------------------------------------------------------------------ counting samples and tokens
def batch_size(batch: Any) -> int:
    """Samples in a batch: images, masked-LM sequences or seq2seq pairs."""
    if isinstance(batch, dict):
        return len(batch["input_ids"] if "input_ids" in batch else batch["src"])
    return len(batch[0])


def token_counter(pl_module: L.LightningModule) -> Callable[[Any], int] | None:
    """Non-pad tokens of a batch (the masked LM's inputs, the seq2seq targets); None for image systems."""
    from aigc_lab.systems.mlm import MLMSystem
    from aigc_lab.systems.seq2seq import Seq2SeqSystem

    if isinstance(pl_module, MLMSystem):
        return _mlm_tokens
    if isinstance(pl_module, Seq2SeqSystem):
        return lambda batch: int((batch["tgt_out"] != pl_module.pad_id).sum())
    return None


def _mlm_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


# ------------------------------------------------------------------ counting FLOPs
def flops_counter(pl_module: L.LightningModule) -> Callable[[Any], int | None]:
    """A function batch -> training FLOPs of that batch, for the project's systems (None for others)."""
    from aigc_lab.systems.gan import GANSystem
    from aigc_lab.systems.mlm import MLMSystem
    from aigc_lab.systems.seq2seq import Seq2SeqSystem

    if isinstance(pl_module, MLMSystem):
        return lambda batch: mlm_train_flops(pl_module, batch)
    if isinstance(pl_module, Seq2SeqSystem):
        return lambda batch: seq2seq_train_flops(pl_module, batch)
    if isinstance(pl_module, GANSystem):
        cache: dict[str, int] = {}

        def gan_flops(batch: Any) -> int:
            # Measured once (the batch size is fixed): not ``cache.setdefault(key, measure())``, which would
            # measure again on every batch (a deep copy and two traced passes, ~20x a tiny model's step).
            if "flops" not in cache:
                cache["flops"] = gan_train_flops(pl_module, batch)
            return cache["flops"]

        return gan_flops
    return _no_flops


def _no_flops(batch: Any) -> None:
    return None


def _params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def stack_flops(n_params: int, n_layers: int, d_model: int, context: int, tokens: int) -> int:
    """Training FLOPs of a Transformer stack for ``tokens`` tokens attending over ``context`` positions."""
    return tokens * (6 * n_params + 12 * n_layers * d_model * context)


def mlm_train_flops(system: L.LightningModule, batch: dict[str, torch.Tensor]) -> int:
    model, cfg = system.model, system.cfg
    masked = int((batch["labels"] != -100).sum())
    body = stack_flops(_params(model.blocks, model.ln_f), cfg.n_layers, cfg.d_model, batch["input_ids"].shape[1],
                       _mlm_tokens(batch))
    return body + masked * 6 * cfg.vocab_size * cfg.d_model


def seq2seq_train_flops(system: L.LightningModule, batch: dict[str, Any]) -> int:
    model, cfg = system.model, system.cfg
    src_len, tgt_len = batch["src"].shape[1], batch["tgt_out"].shape[1]
    src_tokens = int(batch["src_mask"].sum())
    tgt_tokens = int((batch["tgt_out"] != system.pad_id).sum())
    encoder = stack_flops(_params(model.encoder, model.enc_ln), cfg.n_enc_layers, cfg.d_model, src_len, src_tokens)
    decoder = stack_flops(_params(model.decoder, model.dec_ln), cfg.n_dec_layers, cfg.d_model, tgt_len + src_len,
                          tgt_tokens)
    return encoder + decoder + tgt_tokens * 6 * cfg.vocab_size * cfg.d_model


def gan_train_flops(system: L.LightningModule, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """One training batch of the GAN (see the module docstring), counted on meta-device copies."""
    real, labels = (t.to("meta") for t in batch)
    gen = copy.deepcopy(system.generator).to("meta")
    disc = copy.deepcopy(system.discriminator).to("meta")
    n = real.shape[0]
    z = torch.zeros(n, system.cfg.latent_dim, device="meta")
    y = labels if system.cfg.conditional else None
    y2 = torch.cat([y, y]) if y is not None else None
    with torch.no_grad():
        fake = gen(z, y)
    d_step = measure_flops(disc, lambda: disc(torch.cat([real, fake]), y2), loss_fn=torch.Tensor.sum)
    g_forward = measure_flops(gen, lambda: gen(z, y))
    disc.requires_grad_(False)  # as in training (toggle_optimizer): no gradients for D's weights in the G step
    g_step = measure_flops(gen, lambda: disc(gen(z, y), y), loss_fn=torch.Tensor.sum)
    n_critic = system.hparams.n_critic
    return n_critic * d_step + (n_critic - 1) * g_forward + g_step
