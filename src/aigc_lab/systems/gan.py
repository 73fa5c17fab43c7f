"""DCGAN training with Lightning manual optimization.

Each batch: ``n_critic`` discriminator steps on real vs. detached fake images, then one generator
step, with the losses of Goodfellow et al. (2014):

    L_D = -E[log D(x)] - E[log(1 - D(G(z)))]      (binary cross-entropy, real=1 / fake=0)
    L_G = -E[log D(G(z))]                          (the non-saturating generator loss)

Step counting: Lightning 2.x counts every ``optimizer.step()`` of manual optimization in
``global_step``, so a D step plus a G step would count 2. Here only the generator step is counted
(the D step goes through ``strategy.optimizer_step``, which still applies precision plugins such as
16-mixed loss scaling), so ``global_step`` = generator updates = training batches, and
``trainer.max_steps``, ``val_check_interval`` and checkpoint ``every_n_train_steps`` all count
batches, as a user expects.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.utilities import rank_zero_only
from torch.optim.swa_utils import AveragedModel
from torchvision.utils import make_grid

from aigc_lab.errors import ConfigError, UserError
from aigc_lab.metrics.fid import FEATURE_KINDS, ClassifierFeatures, build_feature_extractor, make_fid
from aigc_lab.models.gan import Discriminator, GANConfig, Generator, init_dcgan_weights
from aigc_lab.systems.guards import check_policy
from aigc_lab.systems.schedule import constant_then_linear, planned_steps
from aigc_lab.systems.spec import System, SystemSpec, register, sub_state_dict
from aigc_lab.systems.step_logs import logs_written_this_step
from aigc_lab.utils.memory import (
    TRAIN_STATE_BYTES,
    VALUE_BYTES,
    Need,
    Part,
    layer_output_elements,
    param_count,
    per_sample_part,
)
from aigc_lab.utils.validate import at_least, in_interval, one_of, optimizer_lr, positive

Batch = tuple[torch.Tensor, torch.Tensor]


def gan_train_flops(system: GANSystem, batch: Batch) -> int:
    """FLOPs of one training batch, measured with Lightning's ``measure_flops`` (torch's FlopCounterMode) on
    meta-device copies of the two networks (no compute, the real batch-norm statistics untouched): ``n_critic``
    discriminator steps (forward and backward on real and fake), ``n_critic - 1`` extra generator forwards, and
    the generator step (G forward, D forward, backward through both). Batches all have one size (``drop_last``),
    so the throughput callback measures it once."""
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


def load_generator(ckpt: dict, use_ema: bool = True) -> tuple[torch.nn.Module, torch.Tensor]:
    """The (EMA) generator of a GAN checkpoint, in eval mode, and its label prior."""
    if SPEC.checkpoint_key not in ckpt:
        raise UserError("this checkpoint is not a GAN's: give a gan_mnist checkpoint")
    generator = Generator(GANConfig(**ckpt[SPEC.checkpoint_key]))
    state = ckpt["state_dict"]
    ema = sub_state_dict(state, "generator_ema.module.")
    generator.load_state_dict(ema if use_ema and ema else sub_state_dict(state, "generator."))
    return generator.eval(), state["label_prior"]


SPEC = register(SystemSpec(
    name="gan", describes="a GAN (experiment=gan_mnist)", data_option="mnist",
    net_config=GANConfig, checkpoint_key="gan_config",
    inference="aigc_lab.sample:run",
    export={"torch_export": "aigc_lab.gan_export:export_program"},  # the generator, for use outside aigc_lab
    prepare="aigc_lab.fid_classifier:ensure_fid_classifier",  # the FID classifier, trained when missing
    # Each of a batch's backward passes reaches one network only (the D step: D, the fakes detached; the G
    # step: G, with D frozen), so under DDP the unused half must be found.
    ddp_find_unused_parameters=True,
    clip_option="model.clip_grad_norm=1.0",  # manual optimization: Lightning's gradient_clip_val does not apply
    train_flops=gan_train_flops,
    flops_vary=False,
))


class GANSystem(System):
    spec = SPEC

    def __init__(
        self,
        net: GANConfig,
        optimizer_g: partial,
        optimizer_d: partial,
        lr: float = 2e-4,
        n_critic: int = 1,
        ema_decay: float | None = 0.999,
        clip_grad_norm: float | None = None,
        lr_decay_start: float = 1.0,
        channels_last: bool = False,
        fid_features: str = "classifier",
        classifier_path: str = "~/.cache/aigc_lab/mnist_classifier.pt",
        data_dir: str = "data",
        grid_columns: int = 8,
        confident_threshold: float = 0.9,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
    ) -> None:
        """``lr`` is the base learning rate: the optimizer configs read it by interpolation
        (``lr: ${..lr}``), so ``model.lr=...`` sweeps both; it is kept here for the hparams record.
        ``lr_decay_start``: fraction of training after which both learning rates fall linearly to 0
        (1.0 keeps them constant). ``nonfinite_loss``: a NaN/inf loss stops the run or skips that network's
        step (``systems/guards.py``)."""
        super().__init__()
        positive("model.lr", lr)
        optimizer_lr("model.optimizer_g", optimizer_g)
        optimizer_lr("model.optimizer_d", optimizer_d)
        at_least("model.n_critic", n_critic, 1)
        in_interval("model.lr_decay_start", lr_decay_start, 0, 1)
        in_interval("model.ema_decay", ema_decay, 0, 1, "[)", optional=True)
        positive("model.clip_grad_norm", clip_grad_norm, optional=True)
        if not isinstance(channels_last, bool):
            raise ConfigError(f"model.channels_last={channels_last!r}: true or false (`auto` is resolved by the "
                              f"launcher, utils.hardware.resolve_auto)")
        one_of("model.fid_features", fid_features, FEATURE_KINDS)
        positive("model.grid_columns", grid_columns)
        in_interval("model.confident_threshold", confident_threshold, 0, 1, "(]")
        check_policy(nonfinite_loss)
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.cfg = net
        self.generator = Generator(net)
        self.discriminator = Discriminator(net)
        self.generator.apply(init_dcgan_weights)
        self.discriminator.apply(init_dcgan_weights)
        self.generator_ema = (
            AveragedModel(self.generator, multi_avg_fn=ema_with_warmup(ema_decay), use_buffers=True)
            if ema_decay
            else None
        )
        if self.generator_ema is not None:
            self.generator_ema.requires_grad_(False)  # averaged, never trained (and not DDP's to synchronize)
        # Label prior of the conditional generator: uniform until the training labels are seen.
        n_cls = max(net.num_classes, 1)
        self.register_buffer("label_prior", torch.full((n_cls,), 1.0 / n_cls))
        # Fixed noise for the image grid: one row per class (or 8 rows when unconditional).
        rows = net.num_classes if net.conditional else 8
        self.register_buffer("grid_z", torch.randn(rows * grid_columns, net.latent_dim,
                                                   generator=torch.Generator().manual_seed(0)))
        self.register_buffer("grid_labels", torch.arange(rows).repeat_interleave(grid_columns) % n_cls)
        self.fid = None

    # ---------------------------------------------------------------- sampling
    @property
    def sampler(self) -> Generator:
        """The network that makes samples: the EMA generator when there is one."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    def sample_labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        if not self.cfg.conditional:
            return None
        return torch.multinomial(self.label_prior.cpu(), n, replacement=True, generator=generator).to(self.device)

    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, generator=generator).to(self.device)

    @torch.no_grad()
    def sample(
        self, n: int, labels: torch.Tensor | None = None, seed: int | None = None, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """n images in [-1, 1] from the EMA generator in eval mode; labels drawn from the prior if None."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        z = self.sample_noise(n, gen) if z is None else z
        if labels is None:
            labels = self.sample_labels(n, gen)
        sampler = self.sampler
        was_training = sampler.training
        sampler.eval()
        images = sampler(z, labels).float()
        sampler.train(was_training)
        return images

    # ---------------------------------------------------------------- sizes (checked before any data work)
    def memory_needs(self, datamodule: Any, stage: str = "fit") -> list[Need]:
        """One training batch (data.batch_size) and one validation batch (data.eval_batch_size) for ``"fit"``,
        one test batch for ``"test"``. Per image, the outputs of every layer (utils/memory.py): a training batch
        keeps the generator's, the discriminator's on real and fake images and again on the fakes of the G step
        (3 x), and the images themselves; an evaluation batch samples fakes and runs the FID network on them and
        on the real images. Parameters: G and D with gradients and Adam state, the EMA generator, the FID network
        (the project's classifier; Inception is not counted)."""
        h = getattr(datamodule, "hparams", None)
        if h is None or "batch_size" not in h:
            return []
        g_values, d_values, fid_values, fid_params = self._values_per_image()
        image = self.cfg.image_channels * self.cfg.image_size**2
        trained = param_count(self.generator) + param_count(self.discriminator)
        kept = param_count(self.generator) * (self.generator_ema is not None) + fid_params
        state = TRAIN_STATE_BYTES if stage == "fit" else VALUE_BYTES
        params = Part("parameters" + (" with gradients and Adam state" if stage == "fit" else ""),
                      state * trained + VALUE_BYTES * kept, f"{state} bytes x {trained:,} + 4 bytes x {kept:,} "
                      f"parameters (G and D, EMA generator and FID network)")

        def training(sizes: dict[str, int]) -> list[Part]:
            per_image = g_values + 3 * d_values + 2 * image
            return [params, per_sample_part("activations", per_image, sizes["data.batch_size"],
                                            "values per image (G, 3 x D, images)")]

        def evaluation(sizes: dict[str, int]) -> list[Part]:
            per_image = g_values + 2 * fid_values + 2 * image
            return [params, per_sample_part("activations", per_image, sizes["data.eval_batch_size"],
                                            "values per image (G, 2 x FID network, images)")]

        evaluate = Need(f"one {'validation' if stage == 'fit' else 'test'} batch",
                        {"data.eval_batch_size": h.eval_batch_size}, evaluation)
        if stage != "fit":
            return [evaluate]
        return [Need("one training batch", {"data.batch_size": h.batch_size}, training), evaluate]

    def _values_per_image(self) -> tuple[int, int, int, int]:
        """(generator, discriminator, FID network layer outputs per image, FID network parameters), counted on
        the meta device."""
        from aigc_lab.models.classifier import ClassifierConfig, DigitClassifier

        cfg = self.cfg
        with torch.device("meta"):
            generator, discriminator = Generator(cfg), Discriminator(cfg)
            z = torch.empty(1, cfg.latent_dim)
            labels = torch.zeros(1, dtype=torch.long) if cfg.conditional else None
            image = torch.empty(1, cfg.image_channels, cfg.image_size, cfg.image_size)
            classifier = DigitClassifier(ClassifierConfig()) if self.hparams.fid_features != "none" else None
            digit = torch.empty(1, 1, 28, 28)
        fid = layer_output_elements(classifier, digit) if classifier is not None else 0
        return (layer_output_elements(generator, z, labels), layer_output_elements(discriminator, image, labels),
                fid, param_count(classifier) if classifier is not None else 0)

    # ---------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and self.cfg.conditional and hasattr(datamodule, "class_counts"):
            counts = datamodule.class_counts().float()[: self.cfg.num_classes]
            self.label_prior.copy_(counts / counts.sum())
        if self.fid is None and self.hparams.fid_features != "none":
            extractor = build_feature_extractor(self.hparams.fid_features, self.hparams.classifier_path)
            self.fid = make_fid(extractor).to(self.device)
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_train_start(self) -> None:
        if self.global_rank > 0:
            # seed_everything seeds every DDP rank alike: without an offset every rank would draw the same
            # noise and labels, so N devices would see one fake batch N times.
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        real, labels = batch
        if self.hparams.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        opt_g, opt_d = self.optimizers()
        n = real.shape[0]

        for critic_step in range(self.hparams.n_critic):
            fake_labels = self.sample_labels(n)
            last = critic_step == self.hparams.n_critic - 1
            # The last critic step's fakes are made with grad and reused by the G step (as in the
            # DCGAN reference recipe): one generator forward fewer per batch.
            with torch.set_grad_enabled(last):
                fake = self.generator(self.sample_noise(n), fake_labels)
            # D has no batch norm, so real and fake can share one forward pass.
            d_out = self.discriminator(
                torch.cat([real, fake.detach()]), _cat_labels(labels, fake_labels)
            )
            d_real, d_fake = d_out[:n], d_out[n:]
            loss_d = bce_logits(d_real, 1.0) + bce_logits(d_fake, 0.0)
            d_ok = self.loss_is_finite(loss_d, "train/loss_d")
            if d_ok:  # a non-finite loss under model.nonfinite_loss=skip: no D step
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(loss_d)
                # Through the strategy, not opt_d.step(): applies precision plugins but leaves global_step alone.
                self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=_no_closure, model=self)

        self.toggle_optimizer(opt_g)  # D's parameters need no gradient in the G step
        loss_g = bce_logits(self.discriminator(fake, fake_labels), 1.0)  # -E[log D(G(z))]
        g_ok = self.loss_is_finite(loss_g, "train/loss_g")
        if g_ok:  # else no G step: global_step (generator updates), the schedules and the EMA stay where they are
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
        self.untoggle_optimizer(opt_g)
        if g_ok:
            for scheduler in self.lr_schedulers():
                scheduler.step()
            if self.generator_ema is not None:
                self.generator_ema.update_parameters(self.generator)

        # Only on the steps whose logs are written (every trainer.log_every_n_steps): each self.log costs
        # Lightning a measurable share of this small system's step (systems/step_logs.py).
        if logs_written_this_step(self):
            self._log_step(loss_d if d_ok else None, loss_g if g_ok else None, d_real, d_fake)

    def _log_step(self, loss_d: torch.Tensor | None, loss_g: torch.Tensor | None, d_real: torch.Tensor,
                  d_fake: torch.Tensor) -> None:
        """The losses (on the progress bar too) and D's mean outputs; a skipped (non-finite) loss is left out."""
        self.log_dict({k: v for k, v in (("train/loss_d", loss_d), ("train/loss_g", loss_g)) if v is not None},
                      prog_bar=True)
        if loss_d is not None:
            self.log_dict({
                "train/d_real": torch.sigmoid(d_real.detach().float()).mean(),  # D(x)
                "train/d_fake": torch.sigmoid(d_fake.detach().float()).mean(),  # D(G(z)) before the G step
            })

    def on_before_optimizer_step(self, optimizer) -> None:
        # Clip here, not after manual_backward: under 16-mixed the precision plugin unscales the gradients
        # between the two, so clipping earlier would clip the loss-scaled gradients (by a factor of ~65536).
        if self.hparams.clip_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.clip_grad_norm,
                                gradient_clip_algorithm="norm")

    def configure_optimizers(self):
        opt_g = self.hparams.optimizer_g(self.generator.parameters())
        opt_d = self.hparams.optimizer_d(self.discriminator.parameters())
        # Manual optimization: training_step steps these once per batch (= per global step).
        factor = constant_then_linear(planned_steps(self.trainer), self.hparams.lr_decay_start)
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in (opt_g, opt_d)]
        names = ("lr-g", "lr-d")  # the tags LearningRateMonitor logs (plain "g" and "d" said nothing)
        return [opt_g, opt_d], [{"scheduler": s, "interval": "step", "name": n} for s, n in zip(schedulers, names)]

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._update_fid(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_fid("val")
        self._log_image_grid()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        fake = self._update_fid(batch, batch_idx)
        if isinstance(self.fid_extractor, ClassifierFeatures):
            confidence, preds = self.fid_extractor.class_probs(fake).max(dim=1)
            self._confident += confidence.ge(self.hparams.confident_threshold).sum()
            self._class_hist += torch.bincount(preds, minlength=self._class_hist.numel())

    def on_test_epoch_start(self) -> None:
        n_cls = self.fid_extractor.classifier.cfg.num_classes if self.fid_extractor is not None else 1
        self._confident = torch.zeros((), device=self.device, dtype=torch.long)
        self._class_hist = torch.zeros(n_cls, device=self.device, dtype=torch.long)

    def on_test_epoch_end(self) -> None:
        self._log_fid("test")
        if isinstance(self.fid_extractor, ClassifierFeatures):
            hist = self.trainer.strategy.reduce(self._class_hist.float(), reduce_op="sum")
            confident = self.trainer.strategy.reduce(self._confident.float(), reduce_op="sum")
            share = hist / hist.sum()
            # Sums over all ranks already: sync_dist averages equal numbers (a no-op that marks them global).
            self.log("test/confident_share", confident / hist.sum(), sync_dist=True)
            self.log("test/class_share_min", share.min(), sync_dist=True)
            self.log("test/class_share_max", share.max(), sync_dist=True)
            self.class_histogram = share.cpu()
            self._log_text("test/class_histogram", " ".join(f"{c}:{s:.3f}" for c, s in enumerate(share.tolist())))

    @property
    def fid_extractor(self):
        return self.fid.inception if self.fid is not None else None

    def _update_fid(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Feed the real batch and as many samples (seeded by batch index, so epochs compare)."""
        real, _ = batch
        seed = 10_000 * (self.global_rank + 1) + batch_idx
        fake = self.sample(real.shape[0], seed=seed)
        if self.fid is not None:
            self.fid.update(real, real=True)
            self.fid.update(fake, real=False)
        return fake

    def _log_fid(self, stage: str) -> None:
        if self.fid is None:
            return
        # torchmetrics gathers every rank's features before computing: the value is global already.
        self.log(f"{stage}/fid", self.fid.compute(), prog_bar=True, sync_dist=True)
        self.fid.reset()

    @rank_zero_only
    def _log_image_grid(self) -> None:
        if self.trainer.sanity_checking:
            return
        labels = self.grid_labels if self.cfg.conditional else None
        images = self.sample(len(self.grid_z), labels=labels, z=self.grid_z)
        grid = make_grid(images.float(), nrow=self.hparams.grid_columns, normalize=True, value_range=(-1, 1))
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples/fixed_noise", grid, self.global_step)

    @rank_zero_only
    def _log_text(self, tag: str, text: str) -> None:
        for logger in self.loggers:
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text(tag, text, self.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)  # the non-finite step count
        checkpoint[SPEC.checkpoint_key] = asdict(self.cfg)  # lets `generate` rebuild the generator alone


def ema_with_warmup(decay: float):
    """EMA update for AveragedModel with the usual warm-up ``min(decay, (1 + n) / (10 + n))``.

    torch's get_ema_multi_avg_fn has no warm-up: with decay 0.999 the random initial weights would
    still carry 0.999^1000 = 37% of the average after 1000 steps, which ruins early samples.
    """

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not torch.is_floating_point(ema[0]):  # integer buffers (BN's num_batches_tracked)
            torch._foreach_copy_(ema, current)
            return
        n = float(num_averaged)
        torch._foreach_lerp_(ema, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return update


def bce_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy against a constant target, computed in fp32 for stability."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _cat_labels(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None else torch.cat([a, b])


def _no_closure() -> None:
    return None
