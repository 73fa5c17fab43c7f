"""Use a trained model: ``python -m aigc_lab.generate ckpt_path=PATH ...``.

``ckpt_path`` is a ``.ckpt`` file or a run dir (its best checkpoint, else ``last.ckpt``: checkpoints.py). The
checkpoint names the system that saved it, whose spec (``systems/spec.py``) names the inference entry:

- a GAN's (``aigc_lab.sample``): ``num_samples=N out=FILE`` writes N uint8 images [N, C, H, W] (``out=*.npy``
  streamed to disk chunk by chunk) and a PNG grid beside them; ``label=`` picks one class;
- a masked LM's (``aigc_lab.fill_mask``): ``text="The [MASK] module ..." top_k=5`` prints the top-k tokens with
  their probabilities for each [MASK];
- a seq2seq model's (``aigc_lab.translate``): ``text="..."`` prints the translation; ``input=FILE [out=FILE]``
  translates a file line by line, streamed; ``beam_size=4`` (1 = greedy) and ``length_penalty=1.0`` steer
  the search.

Options and their defaults: ``conf/generate.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint
from aigc_lab.errors import UserError
from aigc_lab.systems.spec import spec_of_checkpoint
from aigc_lab.utils.paths import conf_dir
from aigc_lab.utils.signals import stops_on_signals
from aigc_lab.utils.stale_runs import mark_if_killed, run_dir_of


def run(cfg: DictConfig) -> Path | None:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError("give the checkpoint: python -m aigc_lab.generate ckpt_path=<file.ckpt or run dir> ...")
    path = resolve_checkpoint(cfg.ckpt_path)
    if run_dir_of(path) is not None:  # its run left `running` by a process that is gone: `killed`
        mark_if_killed(run_dir_of(path))
    ckpt = load_checkpoint(path)
    spec = spec_of_checkpoint(ckpt)
    entry = spec.inference_entry() if spec is not None else None
    if entry is None:
        what = spec.describes if spec is not None else "a model that generate does not know"
        raise UserError(f"{path} is a checkpoint of {what}, which has no inference entry: generate takes a GAN "
                        f"(gan_mnist), masked-LM (mlm_*) or seq2seq (seq2seq_*) checkpoint, or one of a system "
                        f"whose spec names its inference")
    return entry(cfg, ckpt, path)


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


@stops_on_signals("generate")  # SIGTERM and Ctrl+C in every stage (utils/signals.py)
def main() -> None:
    sys.argv[1:] = [quote_text_override(arg) for arg in sys.argv[1:]]
    _main()


if __name__ == "__main__":
    main()
