"""Hand-written PyTorch training loops for the three systems: the "(b)" side of bench/overhead.py.

Each loop trains the same ``torch.nn`` modules as the Lightning system, built from the same composed config
(``instantiate(cfg.model.net)``), on the same DataLoader (``instantiate(cfg.data)``: the data modules own
batching and masking), with the same optimizer and learning-rate schedule (``cfg.model.optimizer*``), the same
loss written out as in ``systems/*.py``, the same precision (``cfg.trainer.precision``: autocast as Lightning's
precision plugin applies it), the same gradient clipping and, for the GAN, channels_last, EMA and label prior.
Random numbers are drawn in the launcher's order (seed, data module, networks, data setup, first batch), so
that the same seed gives the same initial weights, batches, masks, noise and dropout: the losses of the two
paths agree step for step.

What a Lightning run adds is left out on purpose: logging, callbacks, progress bar, checkpointing, loop
bookkeeping. What the launcher's configs set and a user would expect of any loop is kept: an epoch is
``limit_train_batches`` batches when that is set, and training stops after ``max_epochs`` epochs.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from step_clock import logging_step
from torch.optim.swa_utils import AveragedModel

from aigc_lab.data.masking import IGNORE_INDEX
from aigc_lab.data.tokenizer import PAD
from aigc_lab.models.gan import Discriminator, Generator, init_dcgan_weights
from aigc_lab.models.linear_ce import linear_cross_entropy
from aigc_lab.models.mlm import MaskedLM
from aigc_lab.models.seq2seq import Seq2SeqTransformer
from aigc_lab.systems.gan import bce_logits, ema_with_warmup
from aigc_lab.systems.schedule import lr_factor
from aigc_lab.systems.token_system import weight_decay_groups
from aigc_lab.utils.hardware import resolve_auto

Losses = dict[str, torch.Tensor]  # "train/loss" (or "train/loss_d", "train/loss_g") -> a 0-d tensor
Step = Callable[[Any], Losses]


@dataclass
class PlainLoop:
    """A data loader and one training step; ``modules`` are the trained networks (for parameter counts)."""

    loader: torch.utils.data.DataLoader
    step: Step
    device: torch.device
    batches_per_epoch: int
    max_epochs: int  # -1: no limit
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)


# ---------------------------------------------------------------- shared pieces
def seed_all(seed: int) -> None:
    """What ``seed_everything`` does for a single process: python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The context Lightning's precision plugin puts around a training step, as a factory."""
    precision = str(precision)
    if precision in ("32-true", "32"):
        return contextlib.nullcontext
    if precision == "bf16-mixed":
        return partial(torch.autocast, device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision {precision!r}: the plain loop supports 32-true and bf16-mixed")


def epoch_batches(n_batches: int, limit: int | float | None) -> int:
    """Batches per epoch under ``trainer.limit_train_batches`` (an int caps, a float is a share), as Lightning."""
    if limit is None:
        return n_batches
    if (isinstance(limit, int) and not isinstance(limit, bool)) or (isinstance(limit, float) and limit > 1.0):
        return min(n_batches, int(limit))
    return int(n_batches * float(limit))


def stepping_batches(cfg: DictConfig, per_epoch: int) -> int:
    """Lightning's ``estimated_stepping_batches`` for one device: what the systems' schedules span."""
    max_steps, max_epochs = int(cfg.trainer.get("max_steps", -1)), cfg.trainer.get("max_epochs")
    by_epochs = per_epoch * max_epochs if max_epochs is not None and max_epochs >= 0 else math.inf
    total = by_epochs if max_steps == -1 else min(by_epochs, max_steps)
    return max(int(total), 1)


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a batch (tuple or dict, strings left alone) onto ``device``, as Lightning's batch_to_device."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return type(batch)(v.to(device, non_blocking=True) if torch.is_tensor(v) else v for v in batch)


def clip_fn(optimizer: torch.optim.Optimizer, max_norm: float | None) -> Callable[[], None]:
    """Gradient clipping by total norm over the optimizer's parameters, in its order (as Lightning clips)."""
    if not max_norm:
        return lambda: None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return lambda: torch.nn.utils.clip_grad_norm_(params, max_norm)


def prepared_data(cfg: DictConfig):
    """The data module, prepared and set up for fitting, as the trainer does before the first batch."""
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    return data


# ---------------------------------------------------------------- the GAN (systems/gan.py, manual optimization)
def gan_loop(cfg: DictConfig, device: torch.device) -> PlainLoop:
    m = cfg.model
    data = instantiate(cfg.data)  # the launcher instantiates the data module before the system
    net = instantiate(m.net)  # GANConfig
    gen, disc = Generator(net), Discriminator(net)  # spectral norm draws its vectors here: same order as the system
    gen.apply(init_dcgan_weights)
    disc.apply(init_dcgan_weights)
    ema = AveragedModel(gen, multi_avg_fn=ema_with_warmup(m.ema_decay), use_buffers=True) if m.ema_decay else None
    if ema is not None:
        ema.requires_grad_(False)
    data.prepare_data()
    data.setup("fit")
    n_cls = max(net.num_classes, 1)
    prior = torch.full((n_cls,), 1.0 / n_cls)
    if net.conditional:  # the label prior of fake samples: the training label shares
        counts = data.class_counts().float()[: net.num_classes]
        prior.copy_(counts / counts.sum())
    channels_last = bool(m.channels_last)
    for module in (gen, disc, ema):
        if module is not None:
            module.to(device=device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    opt_g, opt_d = instantiate(m.optimizer_g)(gen.parameters()), instantiate(m.optimizer_d)(disc.parameters())
    loader = data.train_dataloader()
    per_epoch = epoch_batches(len(loader), cfg.trainer.get("limit_train_batches"))
    total = stepping_batches(cfg, per_epoch)
    decay_from = int(m.lr_decay_start * total)

    def factor(step: int) -> float:  # constant, then linear decay to 0 (GANSystem.configure_optimizers)
        return 1.0 if step < decay_from else max(0.0, (total - step) / max(total - decay_from, 1))

    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in (opt_g, opt_d)]
    clip_g, clip_d = clip_fn(opt_g, m.clip_grad_norm), clip_fn(opt_d, m.clip_grad_norm)
    context = autocast(cfg.trainer.precision, device)

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> Losses:
        real, labels = batch
        if channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        n = real.shape[0]
        with context():  # manual optimization: Lightning's autocast spans the whole training_step
            for critic_step in range(m.n_critic):
                # labels, then noise: the system's order of draws from the global generator
                fake_labels = torch.multinomial(prior, n, replacement=True).to(device) if net.conditional else None
                z = torch.randn(n, net.latent_dim).to(device)
                with torch.set_grad_enabled(critic_step == m.n_critic - 1):  # the last fakes serve the G step
                    fake = gen(z, fake_labels)
                both = None if labels is None or fake_labels is None else torch.cat([labels, fake_labels])
                d_out = disc(torch.cat([real, fake.detach()]), both)
                loss_d = bce_logits(d_out[:n], 1.0) + bce_logits(d_out[n:], 0.0)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                clip_d()
                opt_d.step()
            disc.requires_grad_(False)  # the G step: no gradients for D's weights
            loss_g = bce_logits(disc(fake, fake_labels), 1.0)  # -E[log D(G(z))]
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            clip_g()
            opt_g.step()
            disc.requires_grad_(True)
            for scheduler in schedulers:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(gen)
        return {"train/loss_d": loss_d.detach(), "train/loss_g": loss_g.detach()}

    return PlainLoop(loader, step, device, per_epoch, _max_epochs(cfg), {"generator": gen, "discriminator": disc})


# ---------------------------------------------------------------- the Transformers (automatic optimization)
def mlm_loop(cfg: DictConfig, device: torch.device) -> PlainLoop:
    data = prepared_data(cfg)  # the system builds its network after the data setup (configure_model)
    model = MaskedLM(instantiate(cfg.model.net)(vocab_size=data.vocab_size)).to(device)

    def loss_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:  # MLMSystem.masked_loss
        labels = batch["labels"]
        masked = labels != IGNORE_INDEX  # [B, T]
        logits = model(batch["input_ids"], batch.get("attention_mask"), positions=masked).float()  # [M, V]
        targets = labels[masked]  # [M]
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        return loss_sum / targets.numel() if targets.numel() else loss_sum

    return _automatic(cfg, device, data, model, loss_of)


def seq2seq_loop(cfg: DictConfig, device: torch.device) -> PlainLoop:
    data = prepared_data(cfg)
    model = Seq2SeqTransformer(instantiate(cfg.model.net)(vocab_size=data.vocab_size)).to(device)
    pad, smoothing = data.special_id(PAD), float(cfg.model.label_smoothing)

    def loss_of(batch: dict[str, Any]) -> torch.Tensor:  # Seq2SeqSystem.training_step
        positions = batch["tgt_out"] != pad  # [B, T]
        states = model.target_states(batch["src"], batch["src_mask"], batch["tgt_in"], positions)  # [M, D]
        return linear_cross_entropy(states, model.output_weight, model.out_bias, batch["tgt_out"][positions],
                                    smoothing)

    return _automatic(cfg, device, data, model, loss_of)


def _automatic(cfg: DictConfig, device: torch.device, data, model: torch.nn.Module,
               loss_of: Callable[[Any], torch.Tensor]) -> PlainLoop:
    """forward + loss under autocast, zero_grad, backward, clip, step, schedule: Lightning's automatic loop."""
    m = cfg.model
    optimizer = instantiate(m.optimizer)(weight_decay_groups(model))
    loader = data.train_dataloader()
    per_epoch = epoch_batches(len(loader), cfg.trainer.get("limit_train_batches"))
    total = stepping_batches(cfg, per_epoch)
    factor = partial(lr_factor, total=total, warmup=int(m.warmup_ratio * total), schedule=m.schedule,
                     floor=m.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    clip = clip_fn(optimizer, cfg.trainer.get("gradient_clip_val"))
    context = autocast(cfg.trainer.precision, device)
    model.train()

    def step(batch: Any) -> Losses:
        with context():
            loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip()
        optimizer.step()
        scheduler.step()
        return {"train/loss": loss.detach()}

    return PlainLoop(loader, step, device, per_epoch, _max_epochs(cfg), {"model": model})


def _max_epochs(cfg: DictConfig) -> int:
    max_epochs = cfg.trainer.get("max_epochs")
    return -1 if max_epochs is None else int(max_epochs)


BUILDERS: dict[str, Callable[[DictConfig, torch.device], PlainLoop]] = {
    "gan": gan_loop, "mlm": mlm_loop, "seq2seq": seq2seq_loop,
}


def trainer_device(cfg: DictConfig) -> torch.device:
    """The device ``cfg.trainer.accelerator`` trains on with one device (``auto``: a GPU when there is one)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda", 0) if cuda else torch.device("cpu")


def build(system: str, cfg: DictConfig, device: torch.device | str | None = None) -> PlainLoop:
    """Seed as the launcher does, then build the system's loop (random draws in the launcher's order) on
    ``device`` (default: where the trainer config would train). ``auto`` settings resolve as in the launcher."""
    resolve_auto(cfg)
    seed_all(int(cfg.seed))
    return BUILDERS[system](cfg, torch.device(device) if device is not None else trainer_device(cfg))


# ---------------------------------------------------------------- running
def batches(loop: PlainLoop) -> Iterator[Any]:
    """Training batches across epochs: ``batches_per_epoch`` of each, ``max_epochs`` epochs at most."""
    epoch = 0
    while loop.max_epochs < 0 or epoch < loop.max_epochs:
        for i, batch in enumerate(loop.loader):
            if i >= loop.batches_per_epoch:
                break
            yield batch
        epoch += 1


def run(loop: PlainLoop, steps: int, record_losses: int = 0, every: int = 1) -> dict[str, Any]:
    """Train ``steps`` steps: ``{"starts": [perf_counter at each step start], "end": s, "losses": {...}}``.

    A step starts once its batch is fetched (as Lightning's ``on_train_batch_start``). The losses of the first
    ``record_losses`` logging steps (every ``every``-th step, as the launcher's ``trainer.log_every_n_steps``)
    are copied to the host, as a loop that prints its loss every N steps does (bench/step_clock.py)."""
    starts: list[float] = []
    losses: dict[str, list[float]] = {}
    for batch in batches(loop):
        starts.append(time.perf_counter())
        out = loop.step(to_device(batch, loop.device))
        if len(next(iter(losses.values()), [])) < record_losses and logging_step(len(starts), every):
            for key, value in out.items():
                losses.setdefault(key, []).append(float(value))
        if len(starts) == steps:
            break
    return {"starts": starts, "end": time.perf_counter(), "losses": losses}
