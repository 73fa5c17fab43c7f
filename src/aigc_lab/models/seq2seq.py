"""Encoder-decoder Transformer for translation: one token embedding shared by source, target and
(tied) output layer over a joint vocabulary, learned position tables, pre-LayerNorm encoder blocks,
decoder blocks with causal self-attention and cross-attention, all through ``scaled_dot_product_attention``.

Incremental decoding keeps a ``DecoderCache``: per decoder layer, the self-attention keys/values
(appended at each step) and the cross-attention keys/values (computed once from the memory).

Shapes: B = batch, S = source length, T = target length (<= max_len each), D = d_model, V = vocab_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc_lab.models.transformer import (
    DecoderBlock,
    Encoder,
    KVCache,
    check_transformer_config,
    embed,
    init_transformer_weights,
    key_padding_mask,
    rename_keys,
)


@dataclass
class Seq2SeqConfig:
    vocab_size: int  # the joint source/target vocabulary (the system fills it in from the tokenizer)
    n_enc_layers: int = 3
    n_dec_layers: int = 3
    d_model: int = 256
    n_heads: int = 4
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * d_model
    max_len: int = 128  # size of each position table: the longest source and the longest target, specials included
    dropout: float = 0.1
    tie_embeddings: bool = True  # output layer = the token embedding (plus a bias); false: a separate matrix

    def __post_init__(self) -> None:
        check_transformer_config(self, ("vocab_size", "n_enc_layers", "n_dec_layers", "d_model", "n_heads", "max_len"))


class DecoderCache:
    """Per decoder layer: self-attention k/v [B, H, t, Dh], one step appended per call, and cross-attention
    k/v [B, H, S, Dh], computed from the memory at the first step."""

    def __init__(self, n_layers: int) -> None:
        self.self_kv = [KVCache() for _ in range(n_layers)]
        self.cross_kv = [KVCache() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """Target positions decoded so far (the position of the next token)."""
        return self.self_kv[0].length

    def reorder(self, index: torch.Tensor) -> None:
        """Rows ``index`` [B] of the self-attention caches (each beam takes its parent's past).

        The cross-attention k/v are left alone: beam search only moves rows between the beams of one
        sentence, which share their source, so those rows are identical.
        """
        for cache in self.self_kv:
            cache.reorder(index)


class Seq2SeqTransformer(nn.Module):
    """forward(src [B, S], src_mask [B, S], tgt_in [B, T]) -> logits [B, T, V] (teacher forcing)."""

    def __init__(self, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)  # source, target and (tied) output
        self.src_pos = nn.Embedding(cfg.max_len, d)
        self.tgt_pos = nn.Embedding(cfg.max_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(cfg.n_enc_layers, d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout)
        self.decoder = nn.ModuleList(
            DecoderBlock(d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.n_dec_layers)
        )
        self.dec_ln = nn.LayerNorm(d)
        self.head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(init_transformer_weights)
        # GPT-2's scaled init of the projections that write into the residual stream (3 per decoder block).
        self.encoder.scale_residual_init()
        for block in self.decoder:
            for proj in (block.self_attn.proj, block.cross_attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(3 * cfg.n_dec_layers))
        self._register_load_state_dict_pre_hook(_earlier_layout)

    def new_cache(self) -> DecoderCache:
        return DecoderCache(self.cfg.n_dec_layers)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src_ids [B, S] (src_mask [B, S]: True = token, False = pad; None = no padding) -> memory [B, S, D]."""
        return self.encoder(self.drop(embed(self.tok_emb, self.src_pos, src_ids, what="source")), src_mask)

    def decode(
        self,
        tgt_ids: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        cache: DecoderCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tgt_ids [B, T] -> logits [B, T, V] over the next token at each position, or [M, V] only where the boolean
        ``positions`` [B, T] is True (row-major, like ``tgt_out[positions]``): the vocabulary projection of pad
        positions would be work and memory for nothing.

        Without a cache, tgt_ids is the whole prefix (BOS first) and attention is causal. With one, tgt_ids
        holds only the new positions (usually one token), placed after the ``cache.length`` cached ones.
        """
        return self.logits(self.decoder_states(tgt_ids, memory, src_mask, cache), positions)

    def decoder_states(self, tgt_ids: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None,
                       cache: DecoderCache | None = None) -> torch.Tensor:
        """tgt_ids [B, T] -> the decoder's final hidden states [B, T, D] (after its LayerNorm); see ``decode``."""
        offset = cache.length if cache is not None else 0
        x = self.drop(embed(self.tok_emb, self.tgt_pos, tgt_ids, offset, what="target"))  # [B, T, D]
        memory_mask = key_padding_mask(src_mask)  # [B, 1, 1, S] or None
        for i, block in enumerate(self.decoder):
            x = block(
                x, memory, memory_mask,
                self_cache=cache.self_kv[i] if cache is not None else None,
                cross_cache=cache.cross_kv[i] if cache is not None else None,
            )
        return self.dec_ln(x)

    def logits(self, states: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, T, D] -> logits [B, T, V], or [M, V] at ``positions`` [B, T]."""
        if positions is not None:
            states = states[positions]  # [M, D]
        return F.linear(states, self.output_weight, self.out_bias)

    @property
    def output_weight(self) -> torch.Tensor:
        """[V, D]: the token embedding (tied) or the head's own."""
        return self.tok_emb.weight if self.head is None else self.head.weight

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None, tgt_in: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """src [B, S], src_mask [B, S] or None, tgt_in [B, T] ([BOS] y_1 .. y_{T-1}) -> logits [B, T, V], or [M, V]
        at ``positions`` [B, T]."""
        return self.decode(tgt_in, self.encode(src, src_mask), src_mask, positions=positions)

    def target_states(self, src: torch.Tensor, src_mask: torch.Tensor | None, tgt_in: torch.Tensor,
                      positions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing up to the output layer: the decoder's final states [M, D] at ``positions`` [B, T], for a
        loss that applies the output layer itself (``models/linear_ce.py``)."""
        return self.decoder_states(tgt_in, self.encode(src, src_mask), src_mask)[positions]


def _earlier_layout(state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    """Checkpoints whose encoder was a plain list of blocks beside ``enc_ln`` load into ``Encoder``."""
    rename_keys(state_dict, prefix, {r"encoder\.(\d+)\.": r"encoder.blocks.\1.", r"enc_ln\.": "encoder.ln."})
