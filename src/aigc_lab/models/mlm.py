"""BERT-style masked language model: token + learned position embeddings, pre-LayerNorm Transformer
encoder blocks, a final LayerNorm and an output layer tied to the token embedding (with its own bias).

Shapes: B = batch, T = sequence length (<= max_len), D = d_model, V = vocab_size, M = masked positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from aigc_lab.models.transformer import Block, init_transformer_weights, key_padding_mask


@dataclass
class MLMConfig:
    vocab_size: int  # taken from the tokenizer (the system fills it in when the model is built)
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * d_model
    max_len: int = 128  # size of the learned position table: the longest sequence the model reads
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class MaskedLM(nn.Module):
    """input_ids [B, T] (+ attention_mask [B, T]) -> logits [B, T, V], or [M, V] at the given positions."""

    def __init__(self, cfg: MLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # The output projection is tok_emb.weight (tied); only its bias is a parameter of its own.
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(init_transformer_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> final hidden states [B, T, D]. attention_mask [B, T]: 1 = token, 0 = pad;
        None means no padding (the faster unmasked attention path)."""
        t = input_ids.shape[1]
        if t > self.cfg.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.cfg.max_len}")
        positions = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(positions))  # [B, T, D]
        attn_mask = key_padding_mask(attention_mask)  # [B, 1, 1, T] or None
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)

    def logits_at(self, hidden: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits of hidden [B, T, D]: at every position ([B, T, V]), or only where the
        boolean ``positions`` [B, T] is True ([M, V], row-major order, like ``labels[positions]``)."""
        if positions is not None:
            hidden = hidden[positions]  # [M, D]
        return nn.functional.linear(hidden, self.tok_emb.weight, self.out_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V], or [M, V] at the masked ``positions`` [B, T] only: projecting every
        position onto the vocabulary would dominate the cost of training."""
        return self.logits_at(self.encode(input_ids, attention_mask), positions)
