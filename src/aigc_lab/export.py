"""Export a trained model for use outside aigc_lab: ``python -m aigc_lab.export ckpt_path=PATH out=PATH``.

``ckpt_path`` is a ``.ckpt`` file or a run dir (its best checkpoint, else ``last.ckpt``: checkpoints.py). The
checkpoint names the system that saved it, whose spec (``systems/spec.py``: ``export``) names the formats it
writes; ``format=`` picks one (null: the first):

- a GAN's: ``torch_export``, the generator as a ``torch.export`` program (``aigc_lab/gan_export.py``);
- a masked LM's: ``hf``, a Hugging Face folder (XLMRobertaXLForMaskedLM and its tokenizer) that
  ``transformers.AutoModelForMaskedLM`` and ``AutoTokenizer`` load, and ``model.init_from`` starts a new run from
  (``aigc_lab/hf_export.py``);
- a seq2seq model's: ``hf``, a Hugging Face folder (BlenderbotForConditionalGeneration and its tokenizer) for
  ``transformers.AutoModelForSeq2SeqLM`` (``aigc_lab/hf_seq2seq.py``).

The ``hf`` folders need safetensors (``pip install 'aigc_lab[hf]'``), not transformers.

Options and their defaults: ``conf/export.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from aigc_lab.checkpoints import load_checkpoint, resolve_checkpoint
from aigc_lab.errors import UserError, exit_with
from aigc_lab.systems.spec import spec_of_checkpoint
from aigc_lab.utils.paths import conf_dir
from aigc_lab.utils.signals import stops_on_signals


def run(cfg: DictConfig) -> Path:
    for key in ("ckpt_path", "out"):
        if OmegaConf.is_missing(cfg, key):
            raise UserError("give the checkpoint and where to write: python -m aigc_lab.export "
                            "ckpt_path=<file.ckpt or run dir> out=<path> [format=...]")
    path = resolve_checkpoint(cfg.ckpt_path)
    ckpt = load_checkpoint(path)
    spec = spec_of_checkpoint(ckpt)
    formats = dict(spec.export) if spec is not None else {}
    chosen = cfg.format or next(iter(formats), None)
    if chosen not in formats:
        what = spec.describes if spec is not None else "a model that export does not know"
        offered = ", ".join(formats) or "none"
        raise UserError(f"{path} is a checkpoint of {what}: export writes format={offered}, not {chosen}")
    written = spec.exporter(chosen)(cfg, ckpt, Path(cfg.out).expanduser())
    print(f"wrote {written} ({chosen}, from {path})")
    return written


@stops_on_signals("export")  # SIGTERM and Ctrl+C in every stage (utils/signals.py)
@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except UserError as err:
        exit_with(str(err))


if __name__ == "__main__":
    main()
