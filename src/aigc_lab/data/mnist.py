"""MNIST held in memory as one uint8 tensor, batched by tensor indexing (no per-item PIL decoding)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from aigc_lab.data.prepared import prepare_once
from aigc_lab.errors import ConfigError, DataNotFoundError
from aigc_lab.utils.validate import at_least, positive

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class InMemoryImages(Dataset):
    """uint8 images [N, C, H, W] and labels [N]; a batch of indices is gathered in one indexing op.

    ``__getitems__`` lets the DataLoader fetch a whole batch at once, so the default batch and
    sampler machinery (and Lightning's DistributedSampler injection) still apply.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim == 3:
            images = images.unsqueeze(1)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One image [C, H, W] in [-1, 1] and its label (no batch dimension)."""
        return to_unit_range(self.images[index]), self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return to_unit_range(self.images[idx]), self.labels[idx]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the generator's tanh range)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def _batch_as_is(batch):  # the dataset already returns whole batches
    return batch


def load_mnist(root: str | Path, train: bool, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 28, 28] uint8 and labels [N] from ``<root>/MNIST/raw`` (torchvision's layout)."""
    from torchvision.datasets import MNIST  # lazy: importing torchvision is slow

    root = Path(root).expanduser()
    raw = root / "MNIST" / "raw"
    split = "train" if train else "t10k"
    for name in (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"):
        if (raw / name).is_file():  # torchvision would fail on a bad one with a bare shape or assert error
            check_idx_file(raw / name)
    try:
        ds = MNIST(str(root), train=train, download=download and not _has_raw_files(raw))
    except Exception as err:  # torchvision raises RuntimeError / URLError / OSError variants
        raise DataNotFoundError(
            f"MNIST not found in {raw} and it could not be downloaded ({type(err).__name__}: {err}). "
            f"Fix: point paths.data_dir (or $AIGC_DATA_DIR) at a folder holding mnist/MNIST/raw/"
            f"{{{','.join(MNIST_FILES)}}}, or run once with network access to download it there."
        ) from None
    return ds.data, ds.targets


def check_idx_file(path: Path) -> None:
    """Raise DataNotFoundError unless ``path`` is a whole IDX file of its kind: magic 2051 (images,
    n x rows x cols) or 2049 (labels, n), and as many bytes as its header announces."""
    magic, ndim = (2051, 3) if "images" in path.name else (2049, 1)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    fix = f"Fix: delete {path.parent} and download MNIST again (or copy the original files there)"
    found = int.from_bytes(header[:4], "big") if len(header) >= 4 else None
    if found != magic:
        raise DataNotFoundError(f"{path} is not an MNIST {'images' if ndim == 3 else 'labels'} file: magic number "
                                f"{found}, expected {magic}. {fix}")
    dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = len(header) + math.prod(dims)
    if len(header) < 4 + 4 * ndim or size != expected:
        raise DataNotFoundError(f"{path} is truncated or corrupt: {size} bytes, its header announces "
                                f"{'x'.join(map(str, dims))} values ({expected} bytes). {fix}")


def _has_raw_files(raw: Path) -> bool:
    return all((raw / f).exists() or (raw / f"{f}.gz").exists() for f in MNIST_FILES)


class MNISTDataModule(L.LightningDataModule):
    """Train/val split of the 60k training images, and the 10k test images as the test set."""

    data_option = "mnist"  # the conf/data option it is; train.check_pairing compares the two

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        val_size: int = 5000,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        download: bool = True,
        split_seed: int = 12345,
    ) -> None:
        super().__init__()
        positive("data.batch_size", batch_size)
        positive("data.eval_batch_size", eval_batch_size)
        at_least("data.val_size", val_size, 0)
        at_least("data.num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.root = Path(data_dir).expanduser() / "mnist"
        self.train_set: InMemoryImages | None = None

    @prepare_once
    def prepare_data(self) -> None:  # runs on one process per node: the place to download
        _, labels = load_mnist(self.root, train=True, download=self.hparams.download)
        load_mnist(self.root, train=False, download=self.hparams.download)
        self._check_batch_fits(len(labels))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_mnist(self.root, train=True, download=False)
        self._check_batch_fits(len(labels))
        val_size = min(self.hparams.val_size, len(labels) // 5)
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val_idx, train_idx = perm[:val_size], perm[val_size:]
        self.train_set = InMemoryImages(images[train_idx], labels[train_idx])
        self.val_set = InMemoryImages(images[val_idx], labels[val_idx])
        self.test_set = InMemoryImages(*load_mnist(self.root, train=False, download=False))

    def _check_batch_fits(self, n_images: int) -> None:
        """Training drops the last incomplete batch (equal batch statistics): a batch larger than the training
        split would leave every epoch without a batch."""
        val_size = min(self.hparams.val_size, n_images // 5)
        n_train = n_images - val_size
        if self.hparams.batch_size > n_train:
            raise ConfigError(
                f"data.batch_size={self.hparams.batch_size} is larger than the training split ({n_train} images: "
                f"{n_images} minus data.val_size={val_size}), so an epoch would have no batch: use "
                f"data.batch_size <= {n_train}"
            )

    def class_counts(self) -> torch.Tensor:
        """Training-label histogram [10]: the label prior of a class-conditional generator."""
        return torch.bincount(self.train_set.labels, minlength=10)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.eval_batch_size)

    def _loader(self, ds: InMemoryImages, batch_size: int, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle,  # equal batch sizes in training keep BN statistics comparable
            num_workers=self.hparams.num_workers,
            collate_fn=_batch_as_is,
            persistent_workers=self.hparams.num_workers > 0,
        )
