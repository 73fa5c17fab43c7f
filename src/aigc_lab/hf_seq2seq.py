"""The seq2seq model as a Hugging Face ``transformers`` model (the seq2seq spec's ``format=hf`` exporter).

``python -m aigc_lab.export ckpt_path=<seq2seq run> format=hf out=DIR`` writes ``config.json``,
``generation_config.json``, ``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json``:

    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(DIR)   # BlenderbotForConditionalGeneration
    tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)       # PreTrainedTokenizerFast, our byte-level BPE
    out = model.generate(**tokenizer(["a sentence"], return_tensors="pt"), num_beams=4)

Blenderbot (the large one, not BlenderbotSmall) is our network exactly: pre-LayerNorm encoder and decoder layers,
no LayerNorm on the embeddings (MBart and PLBart have one; Bart, Marian and FSMT are post-LayerNorm; M2M100/NLLB
and Marian use sinusoidal positions), learned position tables numbered from 0 (no offset of 2 as in Bart/MBart),
one per side, a final LayerNorm on each side, unscaled embeddings (``scale_embedding: false``), GELU (erf), an
output layer tied to the shared embedding (or not: ``tie_word_embeddings``) with a bias (``final_logits_bias``).

    ours                                 HF (``model.`` before every name but lm_head and final_logits_bias)
    tok_emb                              shared (= encoder/decoder.embed_tokens, and lm_head when tied; untied,
                                         transformers unties all three: encoder/decoder.embed_tokens are copies)
    src_pos / tgt_pos                    encoder.embed_positions / decoder.embed_positions
    encoder.blocks.i.ln_attn / ln_mlp    encoder.layers.i.self_attn_layer_norm / final_layer_norm
    encoder.blocks.i.attn.qkv (q|k|v)    encoder.layers.i.self_attn.q_proj / k_proj / v_proj
    encoder.blocks.i.attn.proj           encoder.layers.i.self_attn.out_proj
    *.mlp.fc / *.mlp.proj                *.fc1 / *.fc2
    encoder.ln / dec_ln                  encoder.layer_norm / decoder.layer_norm
    decoder.i.ln_self / ln_cross / ln_mlp  decoder.layers.i.self_attn_layer_norm / encoder_attn_layer_norm /
                                         final_layer_norm
    decoder.i.self_attn.qkv / proj       decoder.layers.i.self_attn.q_proj, k_proj, v_proj / out_proj
    decoder.i.cross_attn.q / kv (k|v) / proj  decoder.layers.i.encoder_attn.q_proj / k_proj, v_proj / out_proj
    head (untied only)                   lm_head
    out_bias [V]                         final_logits_bias [1, V]

Decoding starts from [BOS] (``decoder_start_token_id``) and ends at [EOS], as ``generate`` of aigc_lab does.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from aigc_lab.data.tokenizer import BOS, EOS, PAD, SEQ2SEQ_SPECIAL_TOKENS, UNK
from aigc_lab.hf_export import write_tokenizer
from aigc_lab.models.hf_folder import save_folder
from aigc_lab.models.seq2seq import Seq2SeqConfig
from aigc_lab.systems.seq2seq import Seq2SeqSystem
from aigc_lab.systems.spec import sub_state_dict

PARAMS = ("weight", "bias")


def _linear(hf: dict[str, torch.Tensor], state: dict[str, torch.Tensor], ours: str, theirs: list[str]) -> None:
    """Our Linear ``ours`` (fused when ``theirs`` names several) -> HF's Linears ``theirs``, split by rows."""
    for p in PARAMS:
        for name, part in zip(theirs, state[f"{ours}.{p}"].chunk(len(theirs), dim=0)):
            hf[f"{name}.{p}"] = part


def seq2seq_to_hf(state: dict[str, torch.Tensor], cfg: Seq2SeqConfig) -> dict[str, torch.Tensor]:
    """Our Seq2SeqTransformer state dict -> BlenderbotForConditionalGeneration's (tied copies left out)."""
    hf = {"model.shared.weight": state["tok_emb.weight"], "final_logits_bias": state["out_bias"][None, :],
          "model.encoder.embed_positions.weight": state["src_pos.weight"],
          "model.decoder.embed_positions.weight": state["tgt_pos.weight"]}
    if not cfg.tie_embeddings:
        # tie_word_embeddings=false unties transformers' encoder and decoder token tables from ``shared`` too:
        # each gets its copy of our one table
        hf["lm_head.weight"] = state["head.weight"]
        hf["model.encoder.embed_tokens.weight"] = hf["model.decoder.embed_tokens.weight"] = state["tok_emb.weight"]
    norms = [("encoder.ln", "model.encoder.layer_norm"), ("dec_ln", "model.decoder.layer_norm")]
    for i in range(cfg.n_enc_layers):
        ours, theirs = f"encoder.blocks.{i}.", f"model.encoder.layers.{i}."
        norms += [(f"{ours}ln_attn", f"{theirs}self_attn_layer_norm"), (f"{ours}ln_mlp", f"{theirs}final_layer_norm")]
        _linear(hf, state, f"{ours}attn.qkv", [f"{theirs}self_attn.{x}_proj" for x in "qkv"])
        _linear(hf, state, f"{ours}attn.proj", [f"{theirs}self_attn.out_proj"])
        _linear(hf, state, f"{ours}mlp.fc", [f"{theirs}fc1"])
        _linear(hf, state, f"{ours}mlp.proj", [f"{theirs}fc2"])
    for i in range(cfg.n_dec_layers):
        ours, theirs = f"decoder.{i}.", f"model.decoder.layers.{i}."
        norms += [(f"{ours}ln_self", f"{theirs}self_attn_layer_norm"), (f"{ours}ln_mlp", f"{theirs}final_layer_norm"),
                  (f"{ours}ln_cross", f"{theirs}encoder_attn_layer_norm")]
        _linear(hf, state, f"{ours}self_attn.qkv", [f"{theirs}self_attn.{x}_proj" for x in "qkv"])
        _linear(hf, state, f"{ours}self_attn.proj", [f"{theirs}self_attn.out_proj"])
        _linear(hf, state, f"{ours}cross_attn.q", [f"{theirs}encoder_attn.q_proj"])
        _linear(hf, state, f"{ours}cross_attn.kv", [f"{theirs}encoder_attn.{x}_proj" for x in "kv"])
        _linear(hf, state, f"{ours}cross_attn.proj", [f"{theirs}encoder_attn.out_proj"])
        _linear(hf, state, f"{ours}mlp.fc", [f"{theirs}fc1"])
        _linear(hf, state, f"{ours}mlp.proj", [f"{theirs}fc2"])
    for ours, theirs in norms:
        for p in PARAMS:
            hf[f"{theirs}.{p}"] = state[f"{ours}.{p}"]
    return hf


def seq2seq_hf_config(cfg: Seq2SeqConfig) -> dict[str, Any]:
    """config.json of BlenderbotForConditionalGeneration for our network ``cfg``."""
    ids = {token: i for i, token in enumerate(SEQ2SEQ_SPECIAL_TOKENS)}
    ffn = int(cfg.mlp_ratio * cfg.d_model)
    return {
        "architectures": ["BlenderbotForConditionalGeneration"], "model_type": "blenderbot",
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "max_position_embeddings": cfg.max_len,
        "encoder_layers": cfg.n_enc_layers, "encoder_attention_heads": cfg.n_heads, "encoder_ffn_dim": ffn,
        "decoder_layers": cfg.n_dec_layers, "decoder_attention_heads": cfg.n_heads, "decoder_ffn_dim": ffn,
        "activation_function": "gelu", "scale_embedding": False, "dropout": cfg.dropout,
        "attention_dropout": cfg.dropout, "activation_dropout": 0.0, "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0, "init_std": 0.02, "is_encoder_decoder": True,
        "tie_word_embeddings": cfg.tie_embeddings, "pad_token_id": ids[PAD], "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS], "decoder_start_token_id": ids[BOS], "forced_eos_token_id": None,
        "encoder_no_repeat_ngram_size": 0, "dtype": "float32", "aigc_lab": asdict(cfg),  # ours, for the record
    }


def generation_config(cfg: Seq2SeqConfig) -> dict[str, Any]:
    """generation_config.json: start at [BOS], stop at [EOS], none of Blenderbot's chat defaults (n-gram bans)."""
    ids = {token: i for i, token in enumerate(SEQ2SEQ_SPECIAL_TOKENS)}
    return {"decoder_start_token_id": ids[BOS], "bos_token_id": ids[BOS], "eos_token_id": ids[EOS],
            "pad_token_id": ids[PAD], "max_length": cfg.max_len, "num_beams": 1}


def export_seq2seq(cfg: DictConfig, ckpt: dict, out: Path) -> Path:
    """Write the seq2seq model of ``ckpt`` as a Hugging Face model folder ``out`` (module docstring)."""
    net = Seq2SeqSystem.saved_config(ckpt)
    save_folder(out, seq2seq_to_hf(sub_state_dict(ckpt["state_dict"], "model."), net), seq2seq_hf_config(net))
    (out / "generation_config.json").write_text(json.dumps(generation_config(net), indent=2) + "\n")
    specials = {"pad_token": PAD, "unk_token": UNK, "bos_token": BOS, "eos_token": EOS}
    write_tokenizer(out, ckpt["tokenizer_json"], specials, net.max_len)
    return out
