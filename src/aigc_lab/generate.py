"""Sample from a trained model: ``python -m aigc_lab.generate ckpt_path=PATH ...``.

Dispatches on what the checkpoint holds:
- a GAN's (``gan_config``): ``num_samples=N out=FILE.pt`` writes a uint8 tensor [N, C, H, W] with
  ``torch.save`` and a PNG grid of the first samples beside it;
- a masked LM's (``mlm_config``, ``tokenizer_json``): ``text="The [MASK] module ..." top_k=5`` prints
  the top-k tokens with their probabilities for each [MASK];
- a seq2seq model's (``seq2seq_config``, ``tokenizer_json``): ``text="..."`` prints the translation;
  ``input=FILE [out=FILE]`` translates a file line by line (to ``out``, else to stdout);
  ``beam_size=4`` (1 = greedy) and ``length_penalty=1.0`` steer the search.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from aigc_lab.checkpoints import SYSTEM_KEYS, load_checkpoint, resolve_checkpoint, sub_state_dict, system_of
from aigc_lab.errors import UserError
from aigc_lab.train import conf_dir
from aigc_lab.utils.paths import ensure_dir


def load_generator(ckpt: dict, use_ema: bool = True) -> tuple[torch.nn.Module, torch.Tensor]:
    """The (EMA) generator of a GAN checkpoint, in eval mode, and its label prior."""
    from aigc_lab.models.gan import GANConfig, Generator

    if "gan_config" not in ckpt:
        kind = ckpt.get("hyper_parameters", {}).get("_target_") or _system_name(ckpt)
        raise UserError(f"this checkpoint is not a GAN's (it holds {kind}): give a gan_mnist checkpoint")
    generator = Generator(GANConfig(**ckpt["gan_config"]))
    state = ckpt["state_dict"]
    ema = sub_state_dict(state, "generator_ema.module.")
    generator.load_state_dict(ema if use_ema and ema else sub_state_dict(state, "generator."))
    return generator.eval(), state["label_prior"]


@torch.no_grad()
def sample_images(
    generator: torch.nn.Module,
    label_prior: torch.Tensor,
    num_samples: int,
    label: int | None = None,
    seed: int = 0,
    batch_size: int = 1000,
) -> torch.Tensor:
    """uint8 images [N, C, H, W]."""
    from aigc_lab.data.mnist import to_uint8

    cfg = generator.cfg
    if label is not None and not (cfg.conditional and 0 <= label < cfg.num_classes):
        raise UserError(f"label={label} needs a class-conditional generator with classes 0..{cfg.num_classes - 1}")
    rng = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        z = torch.randn(n, cfg.latent_dim, generator=rng)
        labels = None
        if cfg.conditional:
            labels = (torch.full((n,), label) if label is not None
                      else torch.multinomial(label_prior, n, replacement=True, generator=rng))
        out.append(to_uint8(generator(z, labels)))
    return torch.cat(out)


def write_samples(images: torch.Tensor, out: Path, columns: int, grid_max: int) -> Path:
    from torchvision.utils import save_image

    ensure_dir(out.parent, "the samples (out=)")
    torch.save(images, out)
    png = out.with_suffix(".png")
    save_image(images[:grid_max].float() / 255.0, png, nrow=columns, padding=2)
    return png


def _system_name(ckpt: dict) -> str:
    keys = {k.split(".")[0] for k in ckpt.get("state_dict", {})}
    return f"modules {sorted(keys)}"


def run(cfg: DictConfig) -> Path | None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("give the checkpoint: python -m aigc_lab.generate ckpt_path=<file.ckpt or run dir> ...")
    path = resolve_checkpoint(cfg.ckpt_path)
    ckpt = load_checkpoint(path)
    if "mlm_config" in ckpt:
        return run_fill_mask(cfg, ckpt)
    if "seq2seq_config" in ckpt:
        return run_translate(cfg, ckpt)
    if cfg.get("text") is not None or cfg.get("input") is not None:
        kind = SYSTEM_KEYS.get(system_of(ckpt) or "", "neither a masked LM nor a seq2seq model")
        raise UserError(f"{path} is a checkpoint of {kind}: text= and input= need a masked-LM (mlm_*) or seq2seq "
                        f"(seq2seq_*) checkpoint; a GAN checkpoint samples images (num_samples=, label=)")
    if cfg.num_samples <= 0:
        raise UserError(f"num_samples must be positive, got {cfg.num_samples}")
    generator, prior = load_generator(ckpt, use_ema=cfg.use_ema)
    images = sample_images(generator, prior, cfg.num_samples, cfg.label, cfg.seed, cfg.batch_size)
    out = Path(cfg.out or "samples.pt")
    png = write_samples(images, out, cfg.grid_columns, cfg.grid_max)
    print(f"wrote {tuple(images.shape)} uint8 samples from {path} to {out} and a grid to {png}")
    return out


def run_fill_mask(cfg: DictConfig, ckpt: dict) -> None:
    from aigc_lab.fill_mask import fill_mask, format_predictions, load_mlm

    if not cfg.get("text"):
        raise UserError('this is a masked-LM checkpoint: it needs text="... [MASK] ..." (and optionally top_k=5); '
                        'images need a GAN checkpoint (gan_mnist), translations a seq2seq one')
    model, tokenizer = load_mlm(ckpt)
    print(format_predictions(cfg.text, fill_mask(model, tokenizer, cfg.text, cfg.top_k)))


def run_translate(cfg: DictConfig, ckpt: dict) -> Path | None:
    from aigc_lab.translate import load_seq2seq, translate

    text, source = cfg.get("text"), cfg.get("input")
    if (text is None) == (source is None):
        raise UserError('this is a seq2seq checkpoint: it needs text="..." or input=FILE (and optionally out=FILE), '
                        'not both; images need a GAN checkpoint (gan_mnist), fill-mask an mlm_* one')
    if source is not None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"input file not found: {path}")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    else:
        lines = [str(text)]
    model, tokenizer = load_seq2seq(ckpt)
    translations = translate(model, tokenizer, lines, cfg.beam_size, cfg.length_penalty, cfg.max_len,
                             cfg.translate_batch_size)
    if source is None or not cfg.out:
        print("\n".join(translations))
        return None
    out = Path(cfg.out).expanduser()
    ensure_dir(out.parent, "the translations (out=)")
    out.write_text("".join(f"{t}\n" for t in translations), encoding="utf-8")
    print(f"translated {len(lines)} line(s) from {path} to {out}")
    return out


def quote_text_override(arg: str) -> str:
    """``text=The [MASK] module`` (the shell has eaten the quotes) -> ``text='The [MASK] module'``:
    Hydra's override grammar would read ``[`` as the start of a list."""
    key, sep, value = arg.partition("=")
    if key.lstrip("+") != "text" or not sep or value[:1] in ("'", '"'):
        return arg
    return f"{key}='{value.replace(chr(39), chr(92) + chr(39))}'"


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="generate")
def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    sys.argv[1:] = [quote_text_override(arg) for arg in sys.argv[1:]]
    _main()


if __name__ == "__main__":
    main()
