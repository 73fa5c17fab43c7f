"""The masked LM as a Hugging Face folder: the MLM spec's ``format=hf`` exporter (``python -m aigc_lab.export
ckpt_path=<mlm run> format=hf out=DIR``), which writes ``config.json``, ``model.safetensors``, ``tokenizer.json``
and ``tokenizer_config.json``:

    model = transformers.AutoModelForMaskedLM.from_pretrained(DIR)   # XLMRobertaXLForMaskedLM (models/hf_mlm.py)
    tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)      # PreTrainedTokenizerFast, our WordPiece

The parameter mapping is ``models/hf_mlm.py``'s; ``model.init_from=DIR`` starts a new run from such a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from aigc_lab.data.tokenizer import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, UNK
from aigc_lab.models.hf_folder import TOKENIZER, save_folder
from aigc_lab.models.hf_mlm import mlm_hf_config, mlm_to_hf
from aigc_lab.systems.mlm import MLMSystem
from aigc_lab.systems.spec import sub_state_dict


def write_tokenizer(out: Path, tokenizer_json: str, specials: dict[str, str], max_len: int) -> None:
    """tokenizer.json (ours, unchanged) and a tokenizer_config.json that makes ``AutoTokenizer`` a
    PreTrainedTokenizerFast over it, with ``specials`` (``pad_token``: ``[PAD]``, ...)."""
    (out / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def export_mlm(cfg: DictConfig, ckpt: dict, out: Path) -> Path:
    """Write the masked LM of ``ckpt`` as a Hugging Face model folder ``out`` (module docstring)."""
    state = sub_state_dict(ckpt["state_dict"], "model.")
    net = MLMSystem.saved_config(ckpt)
    ids = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    save_folder(out, mlm_to_hf(state, net), mlm_hf_config(net, ids[PAD], ids[CLS], ids[SEP]))
    specials = {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK,
                "bos_token": CLS, "eos_token": SEP}
    write_tokenizer(out, ckpt["tokenizer_json"], specials, net.max_len)
    return out
