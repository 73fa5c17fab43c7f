"""The masked LM as a Hugging Face ``transformers`` model, and back: the mapping that ``hf_export.py`` (``python -m
aigc_lab.export format=hf``) writes and ``model.init_from=<exported dir>`` reads.

``python -m aigc_lab.export ckpt_path=<mlm run> format=hf out=DIR`` writes DIR with ``config.json``,
``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json``, which load with

    model = transformers.AutoModelForMaskedLM.from_pretrained(DIR)   # RobertaPreLayerNormForMaskedLM
    tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)      # PreTrainedTokenizerFast, our WordPiece

RoBERTa-PreLayerNorm is our network exactly (models/mlm.py, layout ``bert``), parameter for parameter:

    ours                                HF (``roberta_prelayernorm.`` before every name but lm_head's)
    tok_emb                             embeddings.word_embeddings (and the tied lm_head.decoder)
    pos_emb row i                       embeddings.position_embeddings row i + 1 (row 0: the pad position, zeros)
    -                                   embeddings.token_type_embeddings: one row of zeros (type_vocab_size = 1)
    emb_ln                              embeddings.LayerNorm
    encoder.blocks.i.ln_attn            encoder.layer.i.attention.LayerNorm
    encoder.blocks.i.attn.qkv (rows q|k|v)  encoder.layer.i.attention.self.query / key / value
    encoder.blocks.i.attn.proj          encoder.layer.i.attention.output.dense
    encoder.blocks.i.ln_mlp             encoder.layer.i.intermediate.LayerNorm
    encoder.blocks.i.mlp.fc / mlp.proj  encoder.layer.i.intermediate.dense / output.dense
    encoder.ln                          LayerNorm (the final one)
    head.fc / head.ln                   lm_head.dense / lm_head.layer_norm
    out_bias                            lm_head.bias

RoBERTa numbers positions from ``pad_token_id + 1`` and gives pad tokens the pad position (their outputs are
masked anyway), so with [PAD] = 0 a sequence sits at rows 1..T: the table has max_len + 1 rows. LayerNorm eps is
ours (1e-5), the activation exact (erf) GELU. Only safetensors and torch are needed, here and to read a folder
back (``load_mlm_folder``); transformers itself is not imported.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from aigc_lab.errors import UserError
from aigc_lab.models.hf_folder import TOKENIZER, WEIGHTS, read_folder
from aigc_lab.models.mlm import MLMConfig

ROOT = "roberta_prelayernorm."
LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which our blocks use


def _renames(n_layers: int) -> list[tuple[str, str]]:
    """(our name, HF name) of every tensor that maps one to one."""
    pairs = [("tok_emb.weight", f"{ROOT}embeddings.word_embeddings.weight"), ("out_bias", "lm_head.bias")]
    modules = [("emb_ln", f"{ROOT}embeddings.LayerNorm"), ("encoder.ln", f"{ROOT}LayerNorm"),
               ("head.fc", "lm_head.dense"), ("head.ln", "lm_head.layer_norm")]
    for i in range(n_layers):
        ours, hf = f"encoder.blocks.{i}.", f"{ROOT}encoder.layer.{i}."
        modules += [(f"{ours}ln_attn", f"{hf}attention.LayerNorm"), (f"{ours}attn.proj", f"{hf}attention.output.dense"),
                    (f"{ours}ln_mlp", f"{hf}intermediate.LayerNorm"), (f"{ours}mlp.fc", f"{hf}intermediate.dense"),
                    (f"{ours}mlp.proj", f"{hf}output.dense")]
    return pairs + [(f"{a}.{p}", f"{b}.{p}") for a, b in modules for p in ("weight", "bias")]


def mlm_to_hf(state_dict: dict[str, torch.Tensor], cfg: MLMConfig) -> dict[str, torch.Tensor]:
    """Our MaskedLM state dict (layout ``bert``) -> RobertaPreLayerNormForMaskedLM's (the tied decoder left out)."""
    hf = {theirs: state_dict[ours] for ours, theirs in _renames(cfg.n_layers)}
    for i in range(cfg.n_layers):
        for p in ("weight", "bias"):
            q, k, v = state_dict[f"encoder.blocks.{i}.attn.qkv.{p}"].chunk(3, dim=0)  # [3D, ...] -> 3 x [D, ...]
            for name, part in (("query", q), ("key", k), ("value", v)):
                hf[f"{ROOT}encoder.layer.{i}.attention.self.{name}.{p}"] = part
    pos = state_dict["pos_emb.weight"]  # [max_len, D]
    hf[f"{ROOT}embeddings.position_embeddings.weight"] = torch.cat([pos.new_zeros(1, pos.shape[1]), pos])
    hf[f"{ROOT}embeddings.token_type_embeddings.weight"] = pos.new_zeros(1, pos.shape[1])
    return hf


def mlm_from_hf(tensors: dict[str, torch.Tensor], n_layers: int, first_position: int = 1) -> dict[str, torch.Tensor]:
    """RobertaPreLayerNormForMaskedLM's state dict -> ours (the inverse of ``mlm_to_hf``). Position ``first_position``
    (pad_token_id + 1) is our position 0; the first token-type row is added to the position rows (with one token
    type, they are always summed)."""
    ours = {mine: tensors[theirs] for mine, theirs in _renames(n_layers)}
    for i in range(n_layers):
        self_attn = f"{ROOT}encoder.layer.{i}.attention.self."
        for p in ("weight", "bias"):
            ours[f"encoder.blocks.{i}.attn.qkv.{p}"] = torch.cat([tensors[f"{self_attn}{n}.{p}"]
                                                                  for n in ("query", "key", "value")])
    pos = tensors[f"{ROOT}embeddings.position_embeddings.weight"][first_position:]  # from our position 0 on
    ours["pos_emb.weight"] = pos + tensors[f"{ROOT}embeddings.token_type_embeddings.weight"][0]
    return ours


def mlm_hf_config(cfg: MLMConfig, pad: int, bos: int, eos: int) -> dict[str, Any]:
    """config.json of RobertaPreLayerNormForMaskedLM for our network ``cfg`` and the ids of [PAD], [CLS], [SEP]."""
    return {
        "architectures": ["RobertaPreLayerNormForMaskedLM"], "model_type": "roberta-prelayernorm",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "intermediate_size": int(cfg.mlp_ratio * cfg.d_model),
        "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.max_len + pad + 1, "type_vocab_size": 1, "layer_norm_eps": LAYER_NORM_EPS,
        "initializer_range": 0.02, "position_embedding_type": "absolute", "tie_word_embeddings": True,
        "pad_token_id": pad, "bos_token_id": bos, "eos_token_id": eos, "dtype": "float32",
        "aigc_lab": asdict(cfg),  # our config, for the record
    }


def load_mlm_folder(path: str | Path) -> tuple[MLMConfig, dict[str, torch.Tensor], str | None]:
    """(our network config, our state dict, tokenizer.json's text or None) of an exported folder: the weights
    that ``model.init_from`` starts from. A folder that transformers saved again loads too, when its network is
    still ours (pre-LayerNorm RoBERTa with exact GELU and LayerNorm eps 1e-5)."""
    path = Path(path).expanduser()
    config, tensors = read_folder(path)
    ours = (config.get("model_type"), config.get("hidden_act"), config.get("layer_norm_eps"))
    if ours != ("roberta-prelayernorm", "gelu", LAYER_NORM_EPS):
        raise UserError(f"{path} holds a {config.get('model_type')} model (hidden_act {config.get('hidden_act')}, "
                        f"layer_norm_eps {config.get('layer_norm_eps')}): model.init_from takes a masked LM exported "
                        f"with format=hf (roberta-prelayernorm, gelu, {LAYER_NORM_EPS})")
    first_position = config.get("pad_token_id", 0) + 1
    net = MLMConfig(vocab_size=config["vocab_size"], n_layers=config["num_hidden_layers"],
                    d_model=config["hidden_size"], n_heads=config["num_attention_heads"],
                    mlp_ratio=config["intermediate_size"] / config["hidden_size"],
                    max_len=config["max_position_embeddings"] - first_position,
                    dropout=config.get("hidden_dropout_prob", 0.1))
    try:
        state = mlm_from_hf(tensors, net.n_layers, first_position)
    except KeyError as err:
        raise UserError(f"{path}/{WEIGHTS} lacks {err.args[0]}: not a RobertaPreLayerNormForMaskedLM") from None
    tokenizer = path / TOKENIZER
    return net, state, tokenizer.read_text(encoding="utf-8") if tokenizer.is_file() else None
