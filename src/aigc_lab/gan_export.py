"""The GAN's generator for use outside aigc_lab (the GAN spec's exporters, ``python -m aigc_lab.export``).

``format=torch_export`` writes a ``torch.export`` program (``.pt2``) of the (EMA) generator in eval mode:

    program = torch.export.load("generator.pt2").module()
    images = program(z, labels)   # z [B, latent_dim] ~ N(0, 1), labels [B] int64 class ids -> [B, C, H, W] in [-1, 1]

(a generator that is not class-conditional takes ``z`` alone). The batch size is dynamic. The file also holds
``aigc_lab.json`` (``torch.export.load(path, extra_files={"aigc_lab.json": ""})``): the network config, the label
prior and how the inputs are drawn, so a user can sample without aigc_lab.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig

from aigc_lab.systems.gan import load_generator

META = "aigc_lab.json"  # the extra file of the program that describes it


def export_program(cfg: DictConfig, ckpt: dict, out: Path) -> Path:
    """Write the generator of ``ckpt`` as a torch.export program to ``out`` (``.pt2`` added when missing)."""
    generator, label_prior = load_generator(ckpt, cfg.use_ema)
    net = generator.cfg
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    z = torch.randn(2, net.latent_dim)  # two samples: torch.export keeps a size-1 dimension static
    if net.conditional:
        args, shapes = (z, torch.zeros(2, dtype=torch.long)), ({0: batch}, {0: batch})
    else:
        args, shapes = (z,), ({0: batch},)
    program = torch.export.export(generator, args, dynamic_shapes=shapes)
    out = out if out.suffix == ".pt2" else out.with_suffix(out.suffix + ".pt2")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "torch.export", "inputs": "z [B, latent_dim] ~ N(0, 1)" + (", labels [B] int64" if
            net.conditional else ""), "output": "images [B, C, H, W] in [-1, 1]", "config": asdict(net),
            "label_prior": [float(p) for p in label_prior], "use_ema": bool(cfg.use_ema)}
    torch.export.save(program, out, extra_files={META: json.dumps(meta)})
    return out
