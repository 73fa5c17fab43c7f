"""Images from a GAN checkpoint: ``python -m aigc_lab.generate ckpt_path=<gan run> num_samples=N out=FILE``
(the GAN spec's inference entry, ``run``).

``num_samples`` uint8 images [N, C, H, W] are sampled in chunks of ``batch_size``, with a PNG grid of the first
``grid_max`` beside ``out``:

- ``out=FILE.npy`` streams them to disk: each chunk is appended to the file as it is sampled, so memory holds one
  chunk whatever N. The file is numpy's ``.npy`` format (``np.load(out, mmap_mode="r")`` reads it without loading
  it), written sequentially into a temporary file renamed at the end (a stopped run leaves no partial file under
  that name). Not through a memory map (``np.lib.format.open_memmap``): a map's written pages count in the
  process's resident memory until the kernel writes them back, so its RSS would grow with N.
- any other name (``samples.pt``, the default) is one tensor written by ``torch.save``, held in memory first: what
  the README's ``torch.load`` reads, for sizes that fit in memory.

Before sampling, the memory (a chunk of the generator's layers, and the whole tensor for ``.pt``) and the disk
space of the output are compared with what this machine has: a request that cannot fit is refused in one line
(for ``.pt``, with ``out=*.npy`` as a fix). A long run shows its progress (a bar in a terminal, else a line on
stderr every ``progress_every`` seconds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from aigc_lab.callbacks.progress import LoopProgress
from aigc_lab.errors import UserError
from aigc_lab.models.gan import GANConfig
from aigc_lab.systems.gan import load_generator
from aigc_lab.utils.memory import Need, Part, check_memory, disk_limit, layer_output_elements, memory_limit
from aigc_lab.utils.paths import ensure_dir

NPY_HEADER_BYTES = 128  # a .npy header of a 4-d shape: the file is this plus the pixels


def check_label(cfg: GANConfig, label: int | None) -> None:
    if label is not None and not (cfg.conditional and 0 <= label < cfg.num_classes):
        raise UserError(f"label={label} needs a class-conditional generator with classes 0..{cfg.num_classes - 1}")


@torch.no_grad()
def sample_chunks(
    generator: torch.nn.Module,
    label_prior: torch.Tensor,
    num_samples: int,
    label: int | None = None,
    seed: int = 0,
    batch_size: int = 1000,
) -> Iterator[torch.Tensor]:
    """uint8 images in chunks [<= batch_size, C, H, W], N in all; the same images whatever is done with them."""
    from aigc_lab.data.mnist import to_uint8

    cfg = generator.cfg
    check_label(cfg, label)
    rng = torch.Generator().manual_seed(seed)
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        z = torch.randn(n, cfg.latent_dim, generator=rng)
        labels = None
        if cfg.conditional:
            labels = (torch.full((n,), label) if label is not None
                      else torch.multinomial(label_prior, n, replacement=True, generator=rng))
        yield to_uint8(generator(z, labels))


def sample_images(generator: torch.nn.Module, label_prior: torch.Tensor, num_samples: int, label: int | None = None,
                  seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
    """uint8 images [N, C, H, W], in memory."""
    return collect(sample_chunks(generator, label_prior, num_samples, label, seed, batch_size),
                   image_shape(generator.cfg, num_samples))


def image_shape(cfg: GANConfig, num_samples: int) -> tuple[int, int, int, int]:
    return num_samples, cfg.image_channels, cfg.image_size, cfg.image_size


def collect(chunks: Iterator[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """The chunks copied into one preallocated tensor of ``shape`` (no list of chunks, no concatenated copy)."""
    images = torch.empty(shape, dtype=torch.uint8)
    start = 0
    for chunk in chunks:
        images[start : start + len(chunk)] = chunk
        start += len(chunk)
    return images


def stream_npy(chunks: Iterator[torch.Tensor], out: Path, shape: tuple[int, ...]) -> None:
    """Write the chunks as one ``.npy`` array of ``shape`` (uint8), appended as they come: the header, then each
    chunk's bytes, into a temporary file beside ``out`` that replaces it at the end."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": tuple(shape)}
            np.lib.format.write_array_header_1_0(f, header)
            for chunk in chunks:
                chunk.numpy().tofile(f)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def head(chunks: Iterator[torch.Tensor], n: int, kept: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Pass the chunks on, keeping copies of their first ``n`` images in ``kept`` (the PNG grid's)."""
    have = 0
    for chunk in chunks:
        if have < n:
            kept.append(chunk[: n - have].clone())
            have += len(kept[-1])
        yield chunk


def write_grid(images: torch.Tensor, out: Path, columns: int) -> Path:
    from torchvision.utils import save_image

    png = out.with_suffix(".png")
    save_image(images.float() / 255.0, png, nrow=columns, padding=2)
    return png


def sample_needs(generator: torch.nn.Module, cfg: DictConfig, in_memory: bool) -> list[Need]:
    """Memory: a chunk of the generator (every layer's outputs, counted on the meta device) and the grid's images,
    plus the whole uint8 tensor when it is held in memory (``.pt``)."""
    gan = generator.cfg
    with torch.device("meta"):
        z = torch.empty(1, gan.latent_dim)
        labels = torch.zeros(1, dtype=torch.long) if gan.conditional else None
        per_image = layer_output_elements(type(generator)(gan), z, labels)
    pixels = gan.image_channels * gan.image_size**2
    size = "x".join(map(str, image_shape(gan, 0)[1:]))

    def parts(sizes: dict[str, int]) -> list[Part]:
        n, batch = sizes["num_samples"], sizes["batch_size"]
        grid = min(cfg.grid_max, n)
        out = [Part("the generator's layers", 4 * per_image * batch,
                    f"batch_size {batch:,} x {per_image:,} values per image x 4 bytes"),
               Part("the grid", 9 * pixels * grid, f"{grid:,} images x {size} x 9 bytes")]
        if in_memory:
            out.append(Part("the images", n * pixels, f"{n:,} x {size} uint8 images held for torch.save"))
        return out

    sizes = {"num_samples": cfg.num_samples, "batch_size": cfg.batch_size}
    hints = {"num_samples": "out=<name>.npy (written to disk chunk by chunk)"} if in_memory else None
    out = Path(cfg.out or "samples.pt").name
    return [Need(f"out={out}", sizes, parts, hints=hints)]


def output_need(cfg: DictConfig, gan: GANConfig) -> Need:
    """Disk: the uint8 images of ``out`` and a header (the PNG grid is small beside them)."""
    pixels = gan.image_channels * gan.image_size**2
    size = "x".join(map(str, image_shape(gan, 0)[1:]))

    def parts(sizes: dict[str, int]) -> list[Part]:
        n = sizes["num_samples"]
        return [Part("the images", n * pixels + NPY_HEADER_BYTES, f"{n:,} x {size} uint8 images")]

    return Need(f"out={Path(cfg.out or 'samples.pt').name}", {"num_samples": cfg.num_samples}, parts,
                hints={"num_samples": "an out= on a disk with more space"})


def run_samples(cfg: DictConfig, ckpt: dict, path: Path) -> Path:
    """Sample ``num_samples`` images into ``out`` (module docstring), after checking memory and disk."""
    for key in ("num_samples", "batch_size", "grid_columns"):
        if cfg[key] <= 0:
            raise UserError(f"{key} must be positive, got {cfg[key]}")
    if cfg.grid_max < 0:
        raise UserError(f"grid_max must be >= 0, got {cfg.grid_max}")
    generator, prior = load_generator(ckpt, use_ema=cfg.use_ema)
    check_label(generator.cfg, cfg.label)
    out = Path(cfg.out or "samples.pt").expanduser()
    streamed = out.suffix == ".npy"
    check_memory(sample_needs(generator, cfg, in_memory=not streamed), memory_limit())
    check_memory([output_need(cfg, generator.cfg)], disk_limit(out))
    ensure_dir(out.parent, "the samples (out=)")
    shape = image_shape(generator.cfg, cfg.num_samples)
    kept: list[torch.Tensor] = []
    with LoopProgress(cfg.num_samples, "samples", "sampling", cfg.progress_every) as progress:
        chunks = progress.track(sample_chunks(generator, prior, cfg.num_samples, cfg.label, cfg.seed, cfg.batch_size),
                                size=len)
        if streamed:
            stream_npy(head(chunks, cfg.grid_max, kept), out, shape)
        else:
            images = collect(chunks, shape)
            torch.save(images, out)
            kept = [images[: cfg.grid_max]]
    grid = f" and a grid to {write_grid(torch.cat(kept), out, cfg.grid_columns)}" if kept else ""
    print(f"wrote {shape} uint8 samples from {path} to {out}{grid}")
    return out


def run(cfg: DictConfig, ckpt: dict, path: Path) -> Path:
    """``generate``'s entry for a GAN checkpoint."""
    if cfg.get("text") is not None or cfg.get("input") is not None:
        raise UserError(f"{path} is a checkpoint of a GAN (experiment=gan_mnist): text= and input= need a masked-LM "
                        f"(mlm_*) or seq2seq (seq2seq_*) checkpoint; a GAN checkpoint samples images (num_samples=, "
                        f"label=)")
    return run_samples(cfg, ckpt, path)
