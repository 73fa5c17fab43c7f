"""Reusable Transformer pieces: pre-LayerNorm blocks with fused-qkv attention through
``scaled_dot_product_attention``, and the ``Encoder`` stack that the masked LM and the seq2seq model share.

Shapes: B = batch, T = sequence length (queries), S = keys (the memory, or the cached past plus T),
D = d_model, H = heads, Dh = D // H.
Masks follow sdpa's boolean convention: True = may attend.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn


def check_transformer_config(cfg: object, positive: tuple[str, ...]) -> None:
    """ValueError unless the fields ``positive`` are > 0, d_model divides into n_heads, mlp_ratio > 0 and
    dropout is in [0, 1): the checks every Transformer config makes in ``__post_init__``."""
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_heads ({cfg.n_heads})")
    if cfg.mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {cfg.mlp_ratio}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")


def key_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, T] (1/True = real token, 0/False = pad) -> boolean [B, 1, 1, T] broadcast over heads and queries.

    None stays None: sdpa then takes its faster unmasked path.
    """
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


class KVCache:
    """Keys and values of one attention layer kept across incremental decoding steps, each [B, H, S, Dh]."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """S: the number of cached positions."""
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's keys and values [B, H, T, Dh]; returns all of them so far, [B, H, S + T, Dh]."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the rows ``index`` [B'] in that order (beam search: each hypothesis takes its parent's cache)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class MultiHead(nn.Module):
    """What every attention layer checks and keeps: the number of heads (which must divide d_model) and the
    attention dropout."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.dropout = n_heads, dropout


class SelfAttention(MultiHead):
    """Multi-head self-attention: one fused qkv projection, sdpa, an output projection."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, D]; attn_mask boolean, broadcastable to [B, H, T, S], or None -> [B, T, D].

        With a ``cache``, x holds only the new positions: their keys and values are appended to the
        cache and the queries attend to everything cached (causally, when ``is_causal``).
        """
        b, t, d = x.shape
        # [B, T, 3D] -> [3, B, H, T, Dh]
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)  # [B, H, past + T, Dh]
            if is_causal and past:
                # sdpa's is_causal aligns its triangle top-left; with `past` cached keys, new query i may
                # see keys 0 .. past + i. One new query (the usual decoding step) sees every key.
                is_causal = False
                if t > 1:
                    causal = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
                    attn_mask = causal if attn_mask is None else attn_mask & causal
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
        )  # [B, H, T, Dh]
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, t, d)))


class CrossAttention(MultiHead):
    """Multi-head attention of queries x [B, T, D] over a memory [B, S, D] (the encoder output): a query
    projection, one fused key/value projection of the memory, sdpa, an output projection."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__(d_model, n_heads, dropout)
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, D], memory [B, S, D], attn_mask boolean broadcastable to [B, H, T, S] -> [B, T, D].

        With a ``cache``, the memory's keys and values are computed at the first call and reused after.
        """
        b, t, d = x.shape
        h, dh = self.n_heads, d // self.n_heads
        q = self.q(x).view(b, t, h, dh).transpose(1, 2)  # [B, H, T, Dh]
        if cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # [B, H, S, Dh], from an earlier step
        else:
            s = memory.shape[1]
            k, v = self.kv(memory).view(b, s, 2, h, dh).permute(2, 0, 3, 1, 4)  # [2, B, H, S, Dh]
            if cache is not None:
                cache.append(k, v)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
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
        # each sub-layer beside the LayerNorm that feeds it
        self.ln_attn, self.attn = nn.LayerNorm(d_model), SelfAttention(d_model, n_heads, dropout)
        self.ln_mlp, self.mlp = nn.LayerNorm(d_model), MLP(d_model, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), attn_mask, is_causal)
        return x + self.mlp(self.ln_mlp(x))


class Encoder(nn.Module):
    """A stack of pre-LayerNorm encoder blocks and a final LayerNorm: embedded x [B, T, D] -> hidden [B, T, D].
    The embeddings (tokens and positions) belong to the model, which may share them with a decoder."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """attention_mask [B, T]: 1/True = token, 0/False = pad; None = no padding (sdpa's unmasked path)."""
        attn_mask = key_padding_mask(attention_mask)  # [B, 1, 1, T] or None
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln(x)

    def scale_residual_init(self, std: float = 0.02) -> None:
        """GPT-2's scaled init of the projections that write into the residual stream: std / sqrt(2 L)."""
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * len(self.blocks)))


def embed(tokens: nn.Embedding, positions: nn.Embedding, ids: torch.Tensor, offset: int = 0,
          what: str = "sequence") -> torch.Tensor:
    """ids [B, T] at positions offset..offset+T-1 -> token + position embeddings [B, T, D]; a ``what`` longer
    than the position table is a ValueError."""
    t = ids.shape[1]
    if offset + t > positions.num_embeddings:
        raise ValueError(f"{what} length {offset + t} exceeds max_len {positions.num_embeddings}")
    return tokens(ids) + positions(torch.arange(offset, offset + t, device=ids.device))


def rename_keys(state_dict: dict[str, torch.Tensor], prefix: str, renames: dict[str, str]) -> None:
    """In place, for checkpoints of an earlier module layout: keys ``prefix + rest`` whose ``rest`` begins with
    the regular expression ``old`` get it replaced by ``new`` (the first that matches)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in renames.items():
            renamed, n = re.subn(f"^{old}", new, rest)
            if n:
                state_dict[prefix + renamed] = state_dict.pop(key)
                break


class DecoderBlock(nn.Module):
    """Pre-LayerNorm decoder block: x + causal self-attn(LN(x)), x + cross-attn(LN(x), memory), x + mlp(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_self, self.self_attn = nn.LayerNorm(d_model), SelfAttention(d_model, n_heads, dropout)
        self.ln_cross, self.cross_attn = nn.LayerNorm(d_model), CrossAttention(d_model, n_heads, dropout)
        self.ln_mlp, self.mlp = nn.LayerNorm(d_model), MLP(d_model, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                self_cache: KVCache | None = None, cross_cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, D] (the new target positions when cached), memory [B, S, D], memory_mask [B, 1, 1, S]."""
        x = x + self.self_attn(self.ln_self(x), is_causal=True, cache=self_cache)
        x = x + self.cross_attn(self.ln_cross(x), memory, memory_mask, cache=cross_cache)
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
