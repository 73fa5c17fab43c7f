"""A small CNN for 28x28 digits. Its penultimate layer is the feature space of the project's FID."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ClassifierConfig:
    num_classes: int = 10
    image_channels: int = 1
    width: int = 32
    feature_dim: int = 128  # size of the embedding that FID compares
    dropout: float = 0.25


class DigitClassifier(nn.Module):
    """image [B, C, 28, 28] in [-1, 1] -> logits [B, classes]; ``features`` gives [B, feature_dim]."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.body = nn.Sequential(
            _conv_bn(cfg.image_channels, w),
            _conv_bn(w, w),
            nn.MaxPool2d(2),  # 28 -> 14
            _conv_bn(w, 2 * w),
            _conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),  # 14 -> 7
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * w * 7 * 7, cfg.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, cfg.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))
