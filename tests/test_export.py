"""``python -m aigc_lab.export``: the GAN's generator as a torch.export program that makes the same images."""

from __future__ import annotations

import json

import torch
from conftest import run_dirs
from runs import ENV, GAN


def test_the_exported_generator_makes_the_same_images(run_cli, tmp_path):
    from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint
    from aigc_lab.systems.gan import load_generator

    run_cli(*GAN, env=ENV)
    (run,) = run_dirs(tmp_path)
    out = tmp_path / "export" / "generator.pt2"
    proc = run_cli(f"ckpt_path={run}", f"out={out}", module="aigc_lab.export", env=ENV)
    assert f"wrote {out} (torch_export" in proc.stdout

    extra = {"aigc_lab.json": ""}
    program = torch.export.load(out, extra_files=extra).module()
    meta = json.loads(extra["aigc_lab.json"])
    generator, prior = load_generator(load_checkpoint(resolve_checkpoint(str(run))))
    assert meta["config"]["latent_dim"] == generator.cfg.latent_dim and len(meta["label_prior"]) == len(prior)
    for n in (1, 5):  # the batch size is dynamic
        z = torch.randn(n, generator.cfg.latent_dim, generator=torch.Generator().manual_seed(n))
        labels = torch.arange(n) % generator.cfg.num_classes
        with torch.no_grad():
            ours, exported = generator(z, labels), program(z, labels)
        assert exported.shape == ours.shape and torch.allclose(exported, ours, atol=1e-6)
        assert torch.equal(to_uint8(exported), to_uint8(ours))  # the same images

    proc = run_cli(f"ckpt_path={run}", f"out={out}", "format=hf", module="aigc_lab.export", env=ENV, check=False)
    assert proc.returncode == 1 and "export writes format=torch_export, not hf" in proc.stderr


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
