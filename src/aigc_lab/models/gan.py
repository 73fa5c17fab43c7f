"""DCGAN-style generator and discriminator for small images (28x28 MNIST by default).

Both are optionally class-conditional: the generator reads a label embedding concatenated to the
noise, the discriminator uses the projection trick of Miyato & Koyama (2018),
``D(x, y) = w . phi(x) + embed(y) . phi(x)``, where ``phi`` is the sum-pooled conv feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class GANConfig:
    latent_dim: int = 64
    num_classes: int = 10  # 0 makes both networks unconditional
    image_channels: int = 1
    image_size: int = 28  # must be divisible by 4: two stride-2 stages
    g_width: int = 32  # channels of the generator's last block; earlier blocks double it
    d_width: int = 32  # channels of the discriminator's first block; later blocks double it
    spectral_norm: bool = True  # spectral norm on every discriminator layer

    def __post_init__(self) -> None:
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {self.image_size}")
        for name in ("latent_dim", "image_channels", "g_width", "d_width"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0


class Generator(nn.Module):
    """z [B, latent] (+ label [B]) -> image [B, C, H, W] in [-1, 1]."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, s = cfg.g_width, cfg.image_size // 4
        in_dim = cfg.latent_dim * (2 if cfg.conditional else 1)
        self.label_embed = nn.Embedding(cfg.num_classes, cfg.latent_dim) if cfg.conditional else None
        self.project = nn.Sequential(
            nn.Linear(in_dim, 4 * w * s * s, bias=False),
            nn.Unflatten(1, (4 * w, s, s)),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(inplace=True),
        )
        self.upsample = nn.Sequential(
            _up_block(4 * w, 2 * w),  # s -> 2s
            _up_block(2 * w, w),  # 2s -> 4s
            nn.Conv2d(w, cfg.image_channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.label_embed(labels)], dim=1)
        return self.upsample(self.project(z))


class Discriminator(nn.Module):
    """image [B, C, H, W] (+ label [B]) -> logit [B] (real > 0)."""

    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
        w = cfg.d_width
        self.features = nn.Sequential(
            sn(nn.Conv2d(cfg.image_channels, w, 4, stride=2, padding=1)),  # H -> H/2
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)),  # H/2 -> H/4
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(2 * w, 4 * w, 3, padding=1)),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.head = sn(nn.Linear(4 * w, 1))
        self.label_embed = sn(nn.Embedding(cfg.num_classes, 4 * w)) if cfg.conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        phi = self.features(x).sum(dim=(2, 3))  # [B, 4w], sum-pooled over space
        logit = self.head(phi).squeeze(1)
        if self.label_embed is not None:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass labels")
            logit = logit + (self.label_embed(labels) * phi).sum(dim=1)
        return logit


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def init_dcgan_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) conv/linear weights and Normal(1, 0.02) BN scales, as in the DCGAN paper."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        weight = getattr(module, "parametrizations", None)
        weight = weight.weight.original if weight is not None else module.weight
        nn.init.normal_(weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
