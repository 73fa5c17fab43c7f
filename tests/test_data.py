import pytest
import torch

from aigc_lab.data.mnist import MNISTDataModule, to_uint8
from aigc_lab.errors import DataNotFoundError


def test_batches_in_range_and_split(data_dir):
    dm = MNISTDataModule(str(data_dir), batch_size=32, val_size=100)
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert labels.shape == (32,) and labels.dtype == torch.int64
    assert len(dm.train_set) + len(dm.val_set) == 600 and len(dm.test_set) == 200
    assert dm.class_counts().sum() == len(dm.train_set)


def test_uint8_round_trip(data_dir):
    dm = MNISTDataModule(str(data_dir))
    dm.setup()
    assert torch.equal(to_uint8(dm.test_set.__getitems__([0, 1])[0]), dm.test_set.images[:2])
    image, label = dm.test_set[1]  # a single item has no batch dimension
    assert image.shape == (1, 28, 28) and label.ndim == 0
    assert torch.equal(to_uint8(image), dm.test_set.images[1])


def test_missing_data_names_the_folder(tmp_path):
    dm = MNISTDataModule(str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "nowhere" / "mnist" / "MNIST" / "raw")):
        dm.prepare_data()
