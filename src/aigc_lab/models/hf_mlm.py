"""The masked LM as a Hugging Face ``transformers`` model, and back: the mapping that ``hf_export.py`` (``python -m
aigc_lab.export format=hf``) writes and ``model.init_from=<exported dir>`` reads.

``python -m aigc_lab.export ckpt_path=<mlm run> format=hf out=DIR`` writes DIR with ``config.json``,
``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json``, which load with

    model = transformers.AutoModelForMaskedLM.from_pretrained(DIR)   # XLMRobertaXLForMaskedLM
    tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)      # PreTrainedTokenizerFast, our WordPiece

Each exportable layout of models/mlm.py is a transformers architecture exactly, parameter for parameter:
``xlm_roberta_xl`` is XLMRobertaXLForMaskedLM, ``bert`` (with the embedding LayerNorm) RobertaPreLayerNormForMaskedLM.

    ours                                XLM-RoBERTa-XL (``roberta.`` before every name but lm_head's)
    tok_emb                             embeddings.word_embeddings (and the tied lm_head.decoder)
    pos_emb row i                       embeddings.position_embeddings row i + 1 (row 0: the pad position, zeros)
    -                                   embeddings.token_type_embeddings: one row of zeros (type_vocab_size = 1)
    encoder.blocks.i.ln_attn            encoder.layer.i.attention.self_attn_layer_norm
    encoder.blocks.i.attn.qkv (rows q|k|v)  encoder.layer.i.attention.self.query / key / value
    encoder.blocks.i.attn.proj          encoder.layer.i.attention.output.dense
    encoder.blocks.i.ln_mlp             encoder.layer.i.LayerNorm
    encoder.blocks.i.mlp.fc / mlp.proj  encoder.layer.i.intermediate.dense / output.dense
    encoder.ln                          encoder.LayerNorm (the final one)
    head.fc / head.ln                   lm_head.dense / lm_head.layer_norm
    out_bias                            lm_head.bias

RoBERTa-PreLayerNorm (``roberta_prelayernorm.`` before the names) differs in names only, and has the embedding
LayerNorm: ``emb_ln`` is its embeddings.LayerNorm, the block LayerNorms are attention.LayerNorm and
intermediate.LayerNorm, the final one is LayerNorm (on the model, not the encoder). A fixed head dense
(``head_dense="fixed"``) is exported as the values it holds; transformers trains it like any other weight.

Both number positions from ``pad_token_id + 1`` and give pad tokens the pad position (their outputs are masked
anyway), so with [PAD] = 0 a sequence sits at rows 1..T: the table has max_len + 1 rows. LayerNorm eps is ours
(1e-5), the activation exact (erf) GELU. Only safetensors and torch are needed, here and to read a folder back
(``load_mlm_folder``); transformers itself is not imported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from aigc_lab.errors import UserError
from aigc_lab.models.hf_folder import TOKENIZER, WEIGHTS, read_folder
from aigc_lab.models.mlm import MLMConfig

LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which our blocks use


@dataclass(frozen=True)
class HFLayout:
    """Where a transformers architecture keeps the parts of our network (module docstring)."""

    architecture: str
    model_type: str
    root: str  # the prefix of the encoder's names
    embedding_norm: str | None
    attention_norm: str  # in encoder.layer.i.
    mlp_norm: str
    final_norm: str  # after root


HF_LAYOUTS = {
    "xlm_roberta_xl": HFLayout("XLMRobertaXLForMaskedLM", "xlm-roberta-xl", "roberta.", None,
                               "attention.self_attn_layer_norm", "LayerNorm", "encoder.LayerNorm"),
    "bert": HFLayout("RobertaPreLayerNormForMaskedLM", "roberta-prelayernorm", "roberta_prelayernorm.",
                     "embeddings.LayerNorm", "attention.LayerNorm", "intermediate.LayerNorm", "LayerNorm"),
}


def hf_layout(layout: str) -> HFLayout:
    """The transformers architecture of our ``layout``; a UserError for the plain layout, which has none."""
    if layout not in HF_LAYOUTS:
        raise UserError("this checkpoint has the earlier masked-LM layout (no head transform), which no "
                        "transformers architecture matches: train it again to export it")
    return HF_LAYOUTS[layout]


def _renames(hf: HFLayout, n_layers: int) -> list[tuple[str, str]]:
    """(our name, HF name) of every tensor that maps one to one."""
    root = hf.root
    pairs = [("tok_emb.weight", f"{root}embeddings.word_embeddings.weight"), ("out_bias", "lm_head.bias")]
    modules = [("encoder.ln", f"{root}{hf.final_norm}"), ("head.fc", "lm_head.dense"),
               ("head.ln", "lm_head.layer_norm")]
    if hf.embedding_norm:
        modules.append(("emb_ln", f"{root}{hf.embedding_norm}"))
    for i in range(n_layers):
        ours, layer = f"encoder.blocks.{i}.", f"{root}encoder.layer.{i}."
        modules += [(f"{ours}ln_attn", f"{layer}{hf.attention_norm}"),
                    (f"{ours}attn.proj", f"{layer}attention.output.dense"),
                    (f"{ours}ln_mlp", f"{layer}{hf.mlp_norm}"), (f"{ours}mlp.fc", f"{layer}intermediate.dense"),
                    (f"{ours}mlp.proj", f"{layer}output.dense")]
    return pairs + [(f"{a}.{p}", f"{b}.{p}") for a, b in modules for p in ("weight", "bias")]


def mlm_to_hf(state_dict: dict[str, torch.Tensor], cfg: MLMConfig) -> dict[str, torch.Tensor]:
    """Our MaskedLM state dict -> its transformers architecture's (the tied decoder left out)."""
    layout = hf_layout(cfg.layout)
    hf = {theirs: state_dict[ours] for ours, theirs in _renames(layout, cfg.n_layers)}
    for i in range(cfg.n_layers):
        for p in ("weight", "bias"):
            q, k, v = state_dict[f"encoder.blocks.{i}.attn.qkv.{p}"].chunk(3, dim=0)  # [3D, ...] -> 3 x [D, ...]
            for name, part in (("query", q), ("key", k), ("value", v)):
                hf[f"{layout.root}encoder.layer.{i}.attention.self.{name}.{p}"] = part
    pos = state_dict["pos_emb.weight"]  # [max_len, D]
    hf[f"{layout.root}embeddings.position_embeddings.weight"] = torch.cat([pos.new_zeros(1, pos.shape[1]), pos])
    hf[f"{layout.root}embeddings.token_type_embeddings.weight"] = pos.new_zeros(1, pos.shape[1])
    return hf


def mlm_from_hf(tensors: dict[str, torch.Tensor], layout: str, n_layers: int,
                first_position: int = 1) -> dict[str, torch.Tensor]:
    """A transformers state dict of our ``layout`` -> ours (the inverse of ``mlm_to_hf``). Position
    ``first_position`` (pad_token_id + 1) is our position 0; the first token-type row is added to the position rows
    (with one token type, they are always summed)."""
    hf = hf_layout(layout)
    ours = {mine: tensors[theirs] for mine, theirs in _renames(hf, n_layers)}
    for i in range(n_layers):
        self_attn = f"{hf.root}encoder.layer.{i}.attention.self."
        for p in ("weight", "bias"):
            ours[f"encoder.blocks.{i}.attn.qkv.{p}"] = torch.cat([tensors[f"{self_attn}{n}.{p}"]
                                                                  for n in ("query", "key", "value")])
    pos = tensors[f"{hf.root}embeddings.position_embeddings.weight"][first_position:]  # from our position 0 on
    ours["pos_emb.weight"] = pos + tensors[f"{hf.root}embeddings.token_type_embeddings.weight"][0]
    return ours


def mlm_hf_config(cfg: MLMConfig, pad: int, bos: int, eos: int) -> dict[str, Any]:
    """config.json of our network ``cfg``'s transformers architecture, with the ids of [PAD], [CLS], [SEP]."""
    hf = hf_layout(cfg.layout)
    return {
        "architectures": [hf.architecture], "model_type": hf.model_type,
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
    still ours (one of HF_LAYOUTS' architectures with exact GELU and LayerNorm eps 1e-5)."""
    path = Path(path).expanduser()
    config, tensors = read_folder(path)
    layout = next((name for name, hf in HF_LAYOUTS.items() if hf.model_type == config.get("model_type")), None)
    if layout is None or (config.get("hidden_act"), config.get("layer_norm_eps")) != ("gelu", LAYER_NORM_EPS):
        types = " or ".join(hf.model_type for hf in HF_LAYOUTS.values())
        raise UserError(f"{path} holds a {config.get('model_type')} model (hidden_act {config.get('hidden_act')}, "
                        f"layer_norm_eps {config.get('layer_norm_eps')}): model.init_from takes a masked LM exported "
                        f"with format=hf ({types}, gelu, {LAYER_NORM_EPS})")
    first_position = config.get("pad_token_id", 0) + 1
    net = MLMConfig(vocab_size=config["vocab_size"], n_layers=config["num_hidden_layers"],
                    d_model=config["hidden_size"], n_heads=config["num_attention_heads"],
                    mlp_ratio=config["intermediate_size"] / config["hidden_size"],
                    max_len=config["max_position_embeddings"] - first_position,
                    dropout=config.get("hidden_dropout_prob", 0.1), layout=layout)
    try:
        state = mlm_from_hf(tensors, layout, net.n_layers, first_position)
    except KeyError as err:
        raise UserError(f"{path}/{WEIGHTS} lacks {err.args[0]}: not a {HF_LAYOUTS[layout].architecture}") from None
    tokenizer = path / TOKENIZER
    return net, state, tokenizer.read_text(encoding="utf-8") if tokenizer.is_file() else None
