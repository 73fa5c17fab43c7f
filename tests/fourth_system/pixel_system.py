"""A fourth system, defined in the test suite only (tests/test_add_system.py): a per-pixel Gaussian per class,
trained on data=mnist by maximum likelihood. It is what the README's "Add a system" asks for: this file (the
system, its spec and its inference entry), one model file and its conf files."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from pixel_model import PixelGaussian, PixelGaussianConfig

from aigc_lab.systems.spec import System, SystemSpec, register, sub_state_dict


def load(ckpt: dict[str, Any]) -> PixelGaussian:
    """The trained network of a checkpoint, for inference."""
    model = PixelGaussian(PixelGaussianConfig(**ckpt[SPEC.checkpoint_key]))
    model.load_state_dict(sub_state_dict(ckpt["state_dict"], "model."))
    return model.eval()


def sample(cfg: DictConfig, ckpt: dict[str, Any], path: Path) -> Path:
    """``python -m aigc_lab.generate ckpt_path=<run> num_samples=N out=FILE.pt``: N uint8 images [N, C, H, W]."""
    model = load(ckpt)
    generator = torch.Generator().manual_seed(cfg.seed)
    labels = torch.randint(0, model.cfg.num_classes, (cfg.num_samples,), generator=generator)
    images = ((model.sample(labels, generator) + 1) * 127.5).round().to(torch.uint8)
    out = Path(cfg.out or "samples.pt")
    torch.save(images, out)
    print(f"wrote {tuple(images.shape)} uint8 samples from {path} to {out}")
    return out


SPEC = register(SystemSpec(
    name="pixel_gaussian",
    describes="a per-pixel Gaussian (experiment=pixel_mnist)",
    data_option="mnist",
    net_config=PixelGaussianConfig,
    checkpoint_key="pixel_gaussian_config",
    inference=f"{__name__}:sample",
))


class PixelGaussianSystem(System):
    spec = SPEC

    def __init__(self, net: PixelGaussianConfig, optimizer: partial, lr: float = 1e-2,
                 nonfinite_loss: str = "stop") -> None:
        """``lr``: read by the optimizer config through interpolation (so sweeps vary ``model.lr``)."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.model = PixelGaussian(net)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        loss = self.model.nll(*batch)
        if not self.loss_is_finite(loss, "train/nll"):
            return None
        self.log("train/nll", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/nll", self.model.nll(*batch), prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("test/nll", self.model.nll(*batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.hparams.optimizer(self.parameters())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[SPEC.checkpoint_key] = asdict(self.model.cfg)
