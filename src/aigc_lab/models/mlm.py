"""BERT-style masked language model: token + learned position embeddings, pre-LayerNorm Transformer
encoder blocks, a final LayerNorm and an output layer tied to the token embedding (with its own bias).

Shapes: B = batch, T = sequence length (<= max_len), D = d_model, V = vocab_size, M = masked positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aigc_lab.models.transformer import Encoder, check_transformer_config, embed, init_transformer_weights, rename_keys


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
        check_transformer_config(self, ("vocab_size", "n_layers", "d_model", "n_heads", "max_len"))


class MaskedLM(nn.Module):
    """input_ids [B, T] (+ attention_mask [B, T]) -> logits [B, T, V], or [M, V] at the given positions."""

    def __init__(self, cfg: MLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cfg.dropout)
        # The output projection is tok_emb.weight (tied); only its bias is a parameter of its own.
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(init_transformer_weights)
        self.encoder.scale_residual_init()
        self._register_load_state_dict_pre_hook(_earlier_layout)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> final hidden states [B, T, D]. attention_mask [B, T]: 1 = token, 0 = pad;
        None means no padding (the faster unmasked attention path)."""
        return self.encoder(self.drop(embed(self.tok_emb, self.pos_emb, input_ids)), attention_mask)

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


def _earlier_layout(state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    """Checkpoints whose blocks and final LayerNorm sat on the model itself load into ``encoder``."""
    rename_keys(state_dict, prefix, {r"blocks\.": "encoder.blocks.", r"ln_f\.": "encoder.ln."})
