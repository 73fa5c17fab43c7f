from functools import partial

import lightning as L
import pytest
import torch

from aigc_lab.data.mnist import MNISTDataModule
from aigc_lab.models.gan import Discriminator, GANConfig, Generator
from aigc_lab.systems.gan import GANSystem


@pytest.mark.parametrize(("num_classes", "conditional_bn"), [(0, False), (10, False), (10, True)])
def test_shapes(num_classes, conditional_bn):
    cfg = GANConfig(latent_dim=16, num_classes=num_classes, g_width=8, d_width=8, conditional_bn=conditional_bn)
    labels = torch.randint(0, 10, (5,)) if num_classes else None
    images = Generator(cfg)(torch.randn(5, 16), labels)
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1
    assert Discriminator(cfg)(images, labels).shape == (5,)


def test_conditional_bn_starts_as_identity_affine():
    system = _system_with(conditional_bn=True)
    gains = system.generator.norm1.gain.weight
    assert gains.shape == (10, 16) and abs(float(gains.mean()) - 1.0) < 0.05


def test_conditional_needs_labels():
    cfg = GANConfig(latent_dim=8, g_width=8, d_width=8)
    with pytest.raises(ValueError, match="labels"):
        Generator(cfg)(torch.randn(2, 8))


def test_config_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible by 4"):
        GANConfig(image_size=30)
    with pytest.raises(ValueError, match="latent_dim"):
        GANConfig(latent_dim=0)


def _system(**kw) -> GANSystem:
    return _system_with(**kw)


def _system_with(conditional_bn: bool = False, **kw) -> GANSystem:
    adam = partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))
    net = GANConfig(latent_dim=16, g_width=8, d_width=8, conditional_bn=conditional_bn)
    return GANSystem(net, adam, adam, fid_features="none", **kw)


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


class StepSpy(L.Callback):
    """Snapshots G and D before each optimizer step and at the end of the batch."""

    def __init__(self):
        self.snaps = []

    def _snap(self, pl_module):
        self.snaps.append((_snapshot(pl_module.generator), _snapshot(pl_module.discriminator)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._snap(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._snap(pl_module)


def test_d_step_changes_only_d_and_g_step_only_g(data_dir):
    system, spy = _system(), StepSpy()
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[spy])
    trainer.fit(system, datamodule=MNISTDataModule(str(data_dir), batch_size=16))
    (g0, d0), (g1, d1), (g2, d2) = spy.snaps  # before D step, before G step, after the batch
    assert all(torch.equal(a, b) for a, b in zip(g0, g1)), "the D step moved G"
    assert any(not torch.equal(a, b) for a, b in zip(d0, d1)), "the D step did not move D"
    assert all(torch.equal(a, b) for a, b in zip(d1, d2)), "the G step moved D"
    assert any(not torch.equal(a, b) for a, b in zip(g1, g2)), "the G step did not move G"


def test_global_step_counts_batches_and_ema_follows(data_dir):
    system = _system(n_critic=2)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(system, datamodule=MNISTDataModule(str(data_dir), batch_size=16))
    assert trainer.global_step == 3  # generator steps = batches, though 9 optimizer steps ran
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 3
    assert int(system.generator_ema.n_averaged) == 3
    # the label prior was learned from the training labels
    assert torch.isclose(system.label_prior.sum(), torch.tensor(1.0))
    assert system.sample(4).shape == (4, 1, 28, 28)


def test_invalid_hyperparameters():
    with pytest.raises(ValueError, match="lr must be positive"):
        _system(lr=0.0)
    with pytest.raises(ValueError, match="n_critic"):
        _system(n_critic=0)


class ClipSpy(GANSystem):
    """Records each optimizer's gradient norm right after the system clipped it."""

    norms: list[float]

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


def test_clipping_sees_unscaled_gradients_under_loss_scaling(data_dir):
    """16-mixed scales the loss (here by 256); clipping must apply to the true gradients (norm <= max, not ~0)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    adam = partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))
    system = ClipSpy(GANConfig(latent_dim=16, g_width=8, d_width=8), adam, adam, fid_features="none",
                     clip_grad_norm=0.01)
    system.norms = []
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # small enough for fp16 here
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(system, datamodule=MNISTDataModule(str(data_dir), batch_size=16))
    assert len(system.norms) == 4  # D and G steps of two batches
    assert all(0.005 < n <= 0.0101 for n in system.norms), system.norms  # clipped to 0.01, in true units


class LogSpy(L.Callback):
    """The names and values that each training batch passes to ``self.log``."""

    def __init__(self, system):
        self.logged, self.calls = [], []
        log = system.log

        def spying_log(name, value, *args, **kwargs):
            self.calls.append((name, float(value)))
            return log(name, value, *args, **kwargs)

        system.log = spying_log

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.logged.append(dict(self.calls))
        self.calls.clear()


class WrittenSteps(L.pytorch.loggers.Logger):
    """A logger that records the steps and values Lightning writes."""

    name, version = "spy", 0

    def __init__(self):
        super().__init__()
        self.rows = []

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, {k: v for k, v in metrics.items() if k.startswith("train/")}))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_scalars_logged_on_the_written_steps_only(data_dir):
    """The GAN logs its per-step scalars only on the steps whose logs Lightning writes (systems/step_logs.py):
    every trainer.log_every_n_steps batches; what is written is that step's own values."""
    system, logger = _system(), WrittenSteps()
    spy = LogSpy(system)
    trainer = L.Trainer(max_steps=7, log_every_n_steps=3, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[spy])
    trainer.fit(system, datamodule=MNISTDataModule(str(data_dir), batch_size=16))
    keys = ["train/d_fake", "train/d_real", "train/loss_d", "train/loss_g"]
    assert [sorted(m) for m in spy.logged] == [[], [], keys, [], [], keys, []]  # batches 3 and 6 of 7
    written = [(step, values) for step, values in logger.rows if values]
    assert [step for step, _ in written] == [2, 5]  # Lightning's logging step: batches done - 1
    for (_, values), logged in zip(written, (spy.logged[2], spy.logged[5]), strict=True):
        assert values == pytest.approx(logged)
