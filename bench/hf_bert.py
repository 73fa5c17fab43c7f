"""The reference of the masked-LM benchmarks: Hugging Face ``BertForMaskedLM`` shaped like our ``MaskedLM``,
and the pieces both benchmark scripts build the same way for both models (AdamW parameter groups).

Bench-only: needs ``transformers`` (``pip install -e ".[bench]"``), which the package itself never imports.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


def require_transformers():
    try:
        import transformers
    except ImportError:
        sys.exit('this benchmark needs Hugging Face transformers: .venv/bin/pip install -e ".[bench]"')
    return transformers


def hf_bert(vocab_size: int, n_layers: int, d_model: int, n_heads: int, mlp_ratio: float, max_len: int,
            dropout: float, pad_id: int = 0) -> nn.Module:
    """A randomly initialised BertForMaskedLM with our shape: same depth, width, heads, MLP width
    (intermediate_size = mlp_ratio * d_model), position table (= sequence length), vocabulary and dropout
    on the same places (embeddings, attention probabilities, both residual branches); sdpa attention."""
    transformers = require_transformers()
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=int(mlp_ratio * d_model),
        hidden_act="gelu",
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_len,
        type_vocab_size=1,
        pad_token_id=pad_id,
        attn_implementation="sdpa",
    )
    model = transformers.BertForMaskedLM(config)
    attn = getattr(model.config, "_attn_implementation", None)
    if attn not in (None, "sdpa"):
        raise RuntimeError(f"BertForMaskedLM uses {attn!r} attention, not sdpa: upgrade transformers")
    return model


def attn_implementation(model: nn.Module) -> str:
    return str(getattr(model.config, "_attn_implementation", "?"))


def adamw_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The grouping of ``systems/mlm.py``: weight decay on matrices only, not on biases or LayerNorm weights.
    Tied weights count once (``parameters()`` yields each tensor once)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def make_adamw(model: nn.Module, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
               impl: str = "default") -> torch.optim.AdamW:
    """``impl``: ``default`` (torch's choice: the for-loop kernel on CPU, what the training config gets),
    ``foreach`` or ``fused``."""
    kwargs = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    return torch.optim.AdamW(adamw_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bert_masked_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       positions: torch.Tensor) -> torch.Tensor:
    """[M, V] logits of BertForMaskedLM at the boolean ``positions`` [B, T]: its encoder, then its MLM head on
    the masked rows only (the head is position-wise, so this equals ``model(...).logits[positions]``)."""
    if attention_mask is not None:
        attention_mask = attention_mask.long()
    hidden = model.bert(input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, D]
    return model.cls(hidden[positions])


def our_masked_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      positions: torch.Tensor) -> torch.Tensor:
    return model(input_ids, attention_mask, positions=positions)
