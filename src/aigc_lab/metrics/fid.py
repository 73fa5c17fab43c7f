"""Feature extractors for torchmetrics' FrechetInceptionDistance.

Inception weights cannot be downloaded on an offline machine, and Inception features say little
about 28x28 digits anyway, so the default feature space is the penultimate layer of a small MNIST
classifier that the project trains itself (``experiment=mnist_classifier``) and caches. Users who
are online can choose ``inception`` (torchmetrics' InceptionV3, needs ``torch-fidelity``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from aigc_lab.errors import ConfigError, UserError
from aigc_lab.models.classifier import ClassifierConfig, DigitClassifier

log = logging.getLogger(__name__)

FEATURE_KINDS = ("classifier", "inception", "none")
MIN_CLASSIFIER_ACCURACY = 0.99


class ClassifierFeatures(nn.Module):
    """Images in [-1, 1] -> the classifier's penultimate features, always computed in fp32."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.cfg.feature_dim  # torchmetrics reads this instead of probing

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # frozen: dropout and BN stay in eval mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            return self.classifier.features(images.float())

    @torch.no_grad()
    def class_probs(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            return self.classifier(images.float()).softmax(dim=1)


class InceptionFeatures(nn.Module):
    """Images in [-1, 1] (1 or 3 channels) -> torchmetrics' InceptionV3 2048-d pool features."""

    def __init__(self) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        except Exception as err:
            raise UserError(
                f"Inception features need `pip install torch-fidelity` and network access for the "
                f"weights ({type(err).__name__}: {err}). Offline, use model.fid_features=classifier."
            ) from None
        self.num_features = 2048

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return self.inception(rgb.expand(-1, 3, -1, -1))


def save_classifier(model: DigitClassifier, path: str | Path, test_acc: float) -> None:
    """Write ``{config, state_dict, test_acc}`` atomically (temp file + rename)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": asdict(model.cfg), "state_dict": model.state_dict(), "test_acc": test_acc}, tmp)
    tmp.replace(path)


def load_classifier(path: str | Path) -> DigitClassifier:
    blob = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    model = DigitClassifier(ClassifierConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    if blob["test_acc"] < MIN_CLASSIFIER_ACCURACY:
        log.warning(
            "FID classifier %s has test accuracy %.4f < %.2f: FID in its feature space is less meaningful",
            path, blob["test_acc"], MIN_CLASSIFIER_ACCURACY,
        )
    return model.eval()


def build_feature_extractor(kind: str, classifier_path: str) -> nn.Module | None:
    """The FID feature module for ``kind``. The classifier's weights must be cached at ``classifier_path``: the
    launchers train them first when they are missing (aigc_lab/fid_classifier.py)."""
    if kind not in FEATURE_KINDS:
        raise ConfigError(f"fid_features must be one of {FEATURE_KINDS}, got {kind!r}")
    if kind == "none":
        return None
    if kind == "inception":
        return InceptionFeatures()
    if not Path(classifier_path).expanduser().exists():
        raise UserError(f"the FID classifier is not at {classifier_path}: `python -m aigc_lab` and `aigc_lab.eval` "
                        f"train it first; elsewhere run python -m aigc_lab experiment=mnist_classifier "
                        f"model.export_path={classifier_path}, or set model.fid_features=none")
    return ClassifierFeatures(load_classifier(classifier_path))


def make_fid(extractor: nn.Module) -> FrechetInceptionDistance:
    # Images reach the extractor as they are ([-1, 1] floats): `normalize` only affects Inception.
    return FrechetInceptionDistance(feature=extractor, reset_real_features=True, normalize=False)
