import pytest
import torch

from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint
from aigc_lab.errors import UserError
from aigc_lab.systems.gan import load_generator


def _save(path, blob):
    torch.save(blob, path)
    return path


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = _save(tmp_path / "good.ckpt", {"state_dict": {"w": torch.randn(1000)}})
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[:500])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(bad)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        resolve_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(UserError, match="no checkpoints"):
        resolve_checkpoint(tmp_path)


def test_run_dir_resolves_to_best_then_last(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    best = _save(ckpts / "epoch_001.ckpt", {"state_dict": {}})
    callbacks = {"ModelCheckpoint{...}": {"best_model_path": str(best)}}
    _save(ckpts / "last.ckpt", {"state_dict": {}, "callbacks": callbacks})
    assert resolve_checkpoint(tmp_path) == best
    best.unlink()
    assert resolve_checkpoint(tmp_path) == ckpts / "last.ckpt"


def test_other_systems_checkpoint_is_refused():
    ckpt = {"state_dict": {"net.body.0.weight": torch.zeros(1)}, "hyper_parameters": {}}
    with pytest.raises(UserError, match="not a GAN"):
        load_generator(ckpt)
