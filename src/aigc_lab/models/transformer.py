"""Reusable Transformer pieces: pre-LayerNorm blocks with fused-qkv attention through
``scaled_dot_product_attention``. Shared by the masked LM and (later) the seq2seq model.

Shapes: B = batch, T = sequence length, D = d_model, H = heads, Dh = D // H.
Masks follow sdpa's boolean convention: True = may attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def key_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T] (1/True = real token, 0/False = pad) -> boolean [B, 1, 1, T] broadcast over heads and queries.

    None stays None: sdpa then takes its faster unmasked path.
    """
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention: one fused qkv projection, sdpa, an output projection."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """x [B, T, D]; attn_mask boolean, broadcastable to [B, H, T, T], or None -> [B, T, D]."""
        b, t, d = x.shape
        # [B, T, 3D] -> [3, B, H, T, Dh]
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # [B, H, T, Dh]
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, t, d)))


class MLP(nn.Module):
    """Linear -> GELU -> Linear -> dropout, hidden width ``mlp_ratio * d_model``."""

    def __init__(self, d_model: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * d_model)
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm encoder block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), attn_mask, is_causal)
        return x + self.mlp(self.ln_mlp(x))


def init_transformer_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/GPT-style init for ``model.apply``: N(0, std) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
