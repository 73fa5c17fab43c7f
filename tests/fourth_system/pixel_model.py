"""A fourth system's network, for tests/test_add_system.py: per class, an independent Gaussian for every pixel
(a mean image and a log standard deviation), the simplest generative model of labelled images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PixelGaussianConfig:
    num_classes: int = 10
    image_channels: int = 1
    image_size: int = 28


class PixelGaussian(nn.Module):
    """labels [B] -> (mean [B, C, H, W], log_std [B, C, H, W]); ``sample`` draws images in [-1, 1]."""

    def __init__(self, cfg: PixelGaussianConfig) -> None:
        super().__init__()
        self.cfg = cfg
        shape = (cfg.num_classes, cfg.image_channels, cfg.image_size, cfg.image_size)
        self.mean = nn.Parameter(torch.zeros(shape))
        self.log_std = nn.Parameter(torch.zeros(shape))

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean[labels], self.log_std[labels]

    def nll(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per pixel (nats), up to the constant log(2 pi) / 2."""
        mean, log_std = self(labels)
        return (log_std + 0.5 * ((images - mean) / log_std.exp()) ** 2).mean()

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_std = self(labels)
        noise = torch.randn(mean.shape, generator=generator)
        return (mean + log_std.exp() * noise).clamp(-1, 1)
