"""DCGAN-style generator and discriminator for small images (28x28 MNIST by default).

Both are optionally class-conditional: the generator reads a label embedding concatenated to the
noise (and, with ``conditional_bn``, a per-class scale and shift in every batch norm), the
discriminator uses the projection trick of Miyato & Koyama (2018),
``D(x, y) = w . phi(x) + embed(y) . phi(x)``, where ``phi`` is the sum-pooled conv feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    conditional_bn: bool = False  # class-conditional batch norm in the generator (per-class scale/shift)

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
        self.project = nn.Sequential(nn.Linear(in_dim, 4 * w * s * s, bias=False), nn.Unflatten(1, (4 * w, s, s)))
        self.norm0 = _batch_norm(cfg, 4 * w)
        self.up1 = nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1, bias=False)  # s -> 2s
        self.norm1 = _batch_norm(cfg, 2 * w)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1, bias=False)  # 2s -> 4s
        self.norm2 = _batch_norm(cfg, w)
        self.to_image = nn.Conv2d(w, cfg.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.label_embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels")
            z = torch.cat([z, self.label_embed(labels)], dim=1)
        h = F.relu(self._norm(self.norm0, self.project(z), labels))
        h = F.relu(self._norm(self.norm1, self.up1(h), labels))
        h = F.relu(self._norm(self.norm2, self.up2(h), labels))
        return torch.tanh(self.to_image(h))

    @staticmethod
    def _norm(norm: nn.Module, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return norm(h, labels) if isinstance(norm, ConditionalBatchNorm2d) else norm(h)


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without its own affine part, then a per-class scale and shift: g_y * norm(x) + b_y."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        self.reset_affine()

    def reset_affine(self) -> None:
        nn.init.normal_(self.gain.weight, 1.0, 0.02)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        gain = self.gain(labels)[:, :, None, None]  # [B, C, 1, 1]
        bias = self.bias(labels)[:, :, None, None]
        return self.norm(x) * gain + bias


def _batch_norm(cfg: GANConfig, channels: int) -> nn.Module:
    if cfg.conditional and cfg.conditional_bn:
        return ConditionalBatchNorm2d(channels, cfg.num_classes)
    return nn.BatchNorm2d(channels)


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


def init_dcgan_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) conv/linear weights and Normal(1, 0.02) BN scales, as in the DCGAN paper.

    ``Module.apply`` visits children before parents, so a conditional BN resets its per-class
    scales after its embeddings were drawn like other weights."""
    if isinstance(module, ConditionalBatchNorm2d):
        module.reset_affine()
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        weight = getattr(module, "parametrizations", None)
        weight = weight.weight.original if weight is not None else module.weight
        nn.init.normal_(weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
