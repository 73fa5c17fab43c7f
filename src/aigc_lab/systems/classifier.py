"""The MNIST classifier whose features define the project's FID (``experiment=mnist_classifier``)."""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from aigc_lab.metrics.fid import save_classifier
from aigc_lab.models.classifier import ClassifierConfig, DigitClassifier
from aigc_lab.systems.guards import NonFiniteLossGuard, check_policy
from aigc_lab.utils.hardware import device_type, resolve_precision
from aigc_lab.utils.memory import (
    TRAIN_STATE_BYTES,
    VALUE_BYTES,
    Need,
    Part,
    layer_output_elements,
    param_count,
    per_sample_part,
)
from aigc_lab.utils.validate import at_least, optimizer_lr

log = logging.getLogger("aigc_lab")


class ClassifierSystem(NonFiniteLossGuard, L.LightningModule):
    """Cross-entropy training with a one-cycle schedule; exports the tested weights to ``export_path``."""

    data_option = "mnist"  # the conf/data option it trains on; train.check_pairing compares the two

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
        n_params = param_count(self.net)
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
        loss = F.cross_entropy(self.net(random_shift(images, self.hparams.max_shift)), labels)
        if not self.loss_is_finite(loss, "train/loss"):
            return None  # model.nonfinite_loss=skip: Lightning takes no optimizer step for this batch
        self.log("train/loss", loss, prog_bar=True)
        return loss

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


def train_feature_classifier(data_dir: str, export_path: str | Path, precision: str = "auto",
                             accelerator: str = "auto", max_epochs: int = 2, seed: int = 0) -> float:
    """Train the FID classifier with the defaults of ``experiment=mnist_classifier``; return its test accuracy.

    Used when a GAN run needs the cached classifier and it is missing, so that a first
    ``python -m aigc_lab experiment=gan_mnist`` works without a separate step. ``precision`` and ``accelerator``:
    the GAN run's (``auto`` resolves as for any run, ``utils/hardware.py``); one device. Progress shows as in the
    main run: Rich bars in a terminal, a log line every 50 steps (with the time left) in a batch job.

    The classifier defines the FID's feature space, so it is trained from its own ``seed``, whatever run asks for
    it: every machine gets the same network (up to its arithmetic), and the asking run's random streams are
    left as they were.
    """
    device = device_type(accelerator)
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        torch.manual_seed(seed)
        return _train_feature_classifier(data_dir, export_path, precision, device, max_epochs)


def _train_feature_classifier(data_dir: str, export_path: str | Path, precision: str, device: str,
                              max_epochs: int) -> float:
    from aigc_lab.callbacks.progress import duration, progress_bar
    from aigc_lab.data.mnist import MNISTDataModule

    if precision == "auto":
        precision = resolve_precision(device).value
    data = MNISTDataModule(data_dir, batch_size=128)
    data.prepare_data()
    data.setup("fit")
    steps = max_epochs * (len(data.train_set) // data.hparams.batch_size)
    log.info("FID feature classifier not found at %s: training it now, once (%d steps in %d epoch%s, %s on %s; "
             "a few minutes on a 2-core CPU, the time left shows as it trains); every later GAN run reuses it",
             export_path, steps, max_epochs, "" if max_epochs == 1 else "s", precision, device)
    system = ClassifierSystem(
        ClassifierConfig(), partial(torch.optim.AdamW, lr=3e-3, weight_decay=1e-4), export_path=str(export_path)
    )
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else device,
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        precision=precision,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[progress_bar()],
    )
    start = time.perf_counter()
    trainer.fit(system, datamodule=data)
    result = trainer.test(system, datamodule=data, verbose=False)
    accuracy = result[0]["test/acc"]
    log.info("FID feature classifier trained in %s: test accuracy %.4f, saved to %s",
             duration(time.perf_counter() - start), accuracy, export_path)
    return accuracy
