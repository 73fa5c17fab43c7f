"""The FID feature classifier: a prerequisite stage of a GAN run, run by the launcher before the run's own fit
(or ``eval``'s test) when the run measures FID in the project's classifier space (``model.fid_features=
classifier``) and the cached weights (``model.classifier_path``) are missing.

It is a visible stage of its own: it says up front what it does and roughly how long it takes, trains with the
run's device and precision (``auto`` already resolved for the machine), shows its progress as the main run does
(Rich bars in a terminal, a log line every 50 steps with the time left in a batch job) and keeps a run dir,
``<paths.log_dir>/fid_classifier/runs/<time>/``, with its ``STATUS``, its log (``fid_classifier.log``) and its
metrics (``metrics.csv``). Every later GAN run reuses the cached weights.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from aigc_lab.callbacks.progress import duration, progress_bar
from aigc_lab.data.mnist import MNISTDataModule
from aigc_lab.models.classifier import ClassifierConfig
from aigc_lab.systems.classifier import ClassifierSystem
from aigc_lab.utils.hardware import device_type, resolve_precision
from aigc_lab.utils.run_info import mark_run

log = logging.getLogger("aigc_lab")


def ensure_fid_classifier(cfg: DictConfig) -> None:
    """The GAN spec's ``prepare`` stage: train and cache the classifier when the run needs it and it is missing."""
    model = cfg.model
    if model.get("fid_features") != "classifier" or Path(model.classifier_path).expanduser().exists():
        return
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(cfg.paths.log_dir) / "fid_classifier" / "runs" / stamp
    train_feature_classifier(str(model.data_dir), model.classifier_path, precision=str(cfg.trainer.precision),
                             accelerator=str(cfg.trainer.get("accelerator", "auto")), run_dir=run_dir)


def train_feature_classifier(data_dir: str, export_path: str | Path, precision: str = "auto",
                             accelerator: str = "auto", max_epochs: int = 2, seed: int = 0,
                             run_dir: Path | None = None) -> float:
    """Train the FID classifier with the defaults of ``experiment=mnist_classifier``; return its test accuracy.

    ``precision`` and ``accelerator``: the GAN run's (``auto`` resolves as for any run, ``utils/hardware.py``);
    one device. ``run_dir``: the stage's own folder (none: no record but the cached weights).

    The classifier defines the FID's feature space, so it is trained from its own ``seed``, whatever run asks for
    it: every machine gets the same network (up to its arithmetic), and the asking run's random streams are
    left as they were.
    """
    device = device_type(accelerator)
    if precision == "auto":
        precision = resolve_precision(device).value
    handler, level = _log_file(run_dir), log.level
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
            torch.manual_seed(seed)
            accuracy = _train(data_dir, export_path, precision, device, max_epochs, run_dir)
    except BaseException as err:
        if run_dir is not None:
            mark_run(run_dir, "failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            log.setLevel(level)
    if run_dir is not None:
        mark_run(run_dir, "done", f"test accuracy {accuracy:.4f}, saved to {export_path}")
    return accuracy


def _log_file(run_dir: Path | None) -> logging.Handler | None:
    """The stage's lines also into ``<run_dir>/fid_classifier.log`` (its STATUS says it is running)."""
    if run_dir is None:
        return None
    mark_run(run_dir, "running")
    handler = logging.FileHandler(run_dir / "fid_classifier.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:  # outside a Hydra job the logger may not pass INFO lines on
        log.setLevel(logging.INFO)
    return handler


def _train(data_dir: str, export_path: str | Path, precision: str, device: str, max_epochs: int,
           run_dir: Path | None) -> float:
    data = MNISTDataModule(data_dir, batch_size=128)
    data.prepare_data()
    data.setup("fit")
    steps = max_epochs * (len(data.train_set) // data.hparams.batch_size)
    log.info("FID feature classifier not found at %s: training it now, once (%d steps in %d epoch%s, %s on %s; "
             "a few minutes on a 2-core CPU, the time left shows as it trains)%s; every later GAN run reuses it",
             export_path, steps, max_epochs, "" if max_epochs == 1 else "s", precision, device,
             f"; its run dir: {run_dir}" if run_dir is not None else "")
    system = ClassifierSystem(
        ClassifierConfig(), partial(torch.optim.AdamW, lr=3e-3, weight_decay=1e-4), export_path=str(export_path)
    )
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else device,
        devices=1,
        max_epochs=max_epochs,
        logger=CSVLogger(run_dir, name="", version="") if run_dir is not None else False,
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
