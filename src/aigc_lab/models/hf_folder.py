"""Hugging Face model folders, read and written with safetensors and torch alone (transformers is never imported):
``config.json`` and ``model.safetensors``. The mappings of our networks onto transformers' are
``models/hf_mlm.py`` and ``hf_seq2seq.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from aigc_lab.errors import UserError

HF_EXTRA = "pip install 'aigc_lab[hf]'"
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"


def safetensors_torch() -> Any:
    """``safetensors.torch``, or a UserError naming the extra that installs it."""
    try:
        import safetensors.torch
    except ImportError as err:
        raise UserError(f"the Hugging Face format needs safetensors: {HF_EXTRA}") from err
    return safetensors.torch


def save_folder(out: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """model.safetensors (each tensor its own contiguous copy: safetensors refuses shared storage) and config.json."""
    st = safetensors_torch()
    out.mkdir(parents=True, exist_ok=True)
    st.save_file({k: v.detach().to(torch.float32).contiguous().clone() for k, v in tensors.items()},
                 str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def read_folder(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json, the tensors of model.safetensors) of a Hugging Face model folder; UserError when missing."""
    path = Path(path).expanduser()
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise UserError(f"{path} is not a Hugging Face model folder written by export format=hf (no {name})")
    config = json.loads((path / CONFIG).read_text())
    return config, safetensors_torch().load_file(str(path / WEIGHTS))
