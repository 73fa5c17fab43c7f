"""The MNIST classifier whose features define the project's FID (``experiment=mnist_classifier``)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from aigc_lab.metrics.fid import save_classifier
from aigc_lab.models.classifier import ClassifierConfig, DigitClassifier
from aigc_lab.systems.guards import check_policy
from aigc_lab.systems.spec import System, SystemSpec, register
from aigc_lab.utils.memory import TRAIN_STATE_BYTES, VALUE_BYTES, Need, Part, layer_output_elements, per_sample_part
from aigc_lab.utils.memory import param_count as count_parameters
from aigc_lab.utils.validate import at_least, optimizer_lr

log = logging.getLogger("aigc_lab")


SPEC = register(SystemSpec(
    name="mnist_classifier",
    describes="an MNIST classifier (experiment=mnist_classifier)",
    data_option="mnist",
))


class ClassifierSystem(System):
    """Cross-entropy training with a one-cycle schedule; exports the tested weights to ``export_path``."""

    spec = SPEC

    def __init__(
        self,
        net: ClassifierConfig,
        optimizer: partial,
        export_path: str | None = None,
        max_shift: int = 2,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__()
        optimizer_lr("model.optimizer", optimizer)
        at_least("model.max_shift", max_shift, 0)
        check_policy(nonfinite_loss)
        self.save_hyperparameters(logger=False)
        self.net = DigitClassifier(net)
        self.val_acc = MulticlassAccuracy(net.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(net.num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def memory_needs(self, datamodule: Any, stage: str = "fit") -> list[Need]:
        """One training batch (the outputs of every layer per image, kept for backward; parameters with
        gradients and AdamW state) and one evaluation batch (utils/memory.py)."""
        h = getattr(datamodule, "hparams", None)
        if h is None or "batch_size" not in h:
            return []
        cfg = self.net.cfg
        with torch.device("meta"):
            per_image = layer_output_elements(DigitClassifier(cfg), torch.empty(1, cfg.image_channels, 28, 28))
        per_image += 2 * cfg.image_channels * 28 * 28  # the images and their shifted copies
        n_params = count_parameters(self.net)
        state = TRAIN_STATE_BYTES if stage == "fit" else VALUE_BYTES
        params = Part("parameters", state * n_params, f"{state} bytes x {n_params:,} parameters")

        def need(key: str, what: str) -> Need:
            def parts(sizes: dict[str, int]) -> list[Part]:
                return [params, per_sample_part("activations", per_image, sizes[key], "values per image")]
            return Need(what, {key: h[key.removeprefix("data.")]}, parts)

        evaluate = need("data.eval_batch_size", f"one {'validation' if stage == 'fit' else 'test'} batch")
        return [need("data.batch_size", "one training batch"), evaluate] if stage == "fit" else [evaluate]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        images, labels = batch
        return self.step_loss(F.cross_entropy(self.net(random_shift(images, self.hparams.max_shift)), labels))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch, stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self.net(images)
        accuracy(logits, labels)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)

    def on_test_epoch_end(self) -> None:
        path = self.hparams.export_path
        if path and self.trainer.is_global_zero:
            if Path(path).expanduser().exists():
                log.warning("Replacing the classifier at %s: FIDs measured with the old one are not comparable "
                            "with those measured with this one", path)
            save_classifier(self.net, path, float(self.test_acc.compute()))

    def configure_optimizers(self):
        optimizer = self.hparams.optimizer(self.parameters())
        lr = optimizer.param_groups[0]["lr"]
        total = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def random_shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero-padded background = -1)."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), device=images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]  # [B,1,H,1]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]  # [B,1,1,W]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    return padded[batch, chans, rows, cols]
