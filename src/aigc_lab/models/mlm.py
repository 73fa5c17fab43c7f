"""BERT-style masked language model: token + learned position embeddings, pre-LayerNorm Transformer encoder
blocks, a final LayerNorm, a head transform (dense, GELU, LayerNorm) and an output layer tied to the token
embedding (with its own bias).

    x_0 = Dropout(E[ids] + P[0..T-1])
    h   = LN_f(Block_L(... Block_1(x_0)))
    logits = LN_head(GELU(W_head h + b_head)) E^T + b_out

This is XLM-RoBERTa-XL's layout (``layout="xlm_roberta_xl"``), which ``python -m aigc_lab.export format=hf`` maps
onto (models/hf_mlm.py). ``layout="bert"`` adds an embedding LayerNorm, x_0 = Dropout(LN_emb(E[ids] + P)):
RoBERTa-PreLayerNorm's layout, exported as that. ``layout="plain"`` has neither LN_emb nor the head transform: the
layout of checkpoints saved before they existed, which no transformers architecture matches.

The head's dense layer starts at W = I, b = 3, where GELU is nearly the identity (GELU(z) = z Phi(z), Phi(3) =
0.9987): the head starts as LN of its input, and the tied output layer reads the space the embeddings write into.
With ``head_dense="fixed"`` it stays there (its weights are not trained: the head is a fixed map followed by a
learned LayerNorm); ``head_dense="learned"`` trains it, as BERT does. BENCHMARKS.md ("Masked LM: the layouts side
by side at the budget") measures what each costs against the plain layout.

Shapes: B = batch, T = sequence length (<= max_len), D = d_model, V = vocab_size, M = masked positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc_lab.models.transformer import Encoder, check_transformer_config, embed, init_transformer_weights, rename_keys

LAYOUTS = ("xlm_roberta_xl", "bert", "plain")
HEAD_DENSE = ("fixed", "learned")
HEAD_BIAS_START = 3.0  # GELU(z) = z Phi(z) is within 0.2% of z from here up


@dataclass
class MLMConfig:
    vocab_size: int  # taken from the tokenizer (the system fills it in when the model is built)
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * d_model
    max_len: int = 128  # size of the learned position table: the longest sequence the model reads
    dropout: float = 0.1
    # xlm_roberta_xl: a head transform before the output layer; bert: also an embedding LayerNorm, as BERT and
    # RoBERTa have; plain: neither (checkpoints saved before they existed load with it: systems/mlm.py)
    layout: str = "xlm_roberta_xl"
    head_dense: str = "fixed"  # the head transform's dense layer: fixed at its start (W = I, b = 3) | learned

    def __post_init__(self) -> None:
        check_transformer_config(self, ("vocab_size", "n_layers", "d_model", "n_heads", "max_len"))
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.head_dense not in HEAD_DENSE:
            raise ValueError(f"head_dense must be one of {', '.join(HEAD_DENSE)}, got {self.head_dense!r}")

    @property
    def embedding_norm(self) -> bool:
        return self.layout == "bert"

    @property
    def head_transform(self) -> bool:
        return self.layout != "plain"


class HeadTransform(nn.Module):
    """BERT's prediction-head transform of the final hidden states: LN(GELU(W h + b)), [..., D] -> [..., D]."""

    def __init__(self, d_model: int, learn_dense: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, d_model)
        self.ln = nn.LayerNorm(d_model)
        self.fc.requires_grad_(learn_dense)  # fixed: it keeps its start (or the values a checkpoint loads)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.ln(F.gelu(self.fc(hidden)))

    @torch.no_grad()
    def start_as_identity(self) -> None:
        """W = I, b = HEAD_BIAS_START: the head starts as LN(GELU(h + b)), nearly LN(h) for h > -b, so the tied
        output layer reads the space the input embeddings write into (a random W would scramble it first)."""
        nn.init.eye_(self.fc.weight)
        nn.init.constant_(self.fc.bias, HEAD_BIAS_START)


class MaskedLM(nn.Module):
    """input_ids [B, T] (+ attention_mask [B, T]) -> logits [B, T, V], or [M, V] at the given positions."""

    def __init__(self, cfg: MLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.emb_ln = nn.LayerNorm(cfg.d_model) if cfg.embedding_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cfg.dropout)
        self.head = (HeadTransform(cfg.d_model, learn_dense=cfg.head_dense == "learned") if cfg.head_transform
                     else nn.Identity())
        # The output projection is tok_emb.weight (tied); only its bias is a parameter of its own.
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(init_transformer_weights)
        self.encoder.scale_residual_init()
        self._start_extra_parts_like_plain()
        self._register_load_state_dict_pre_hook(_earlier_layout)

    @torch.no_grad()
    def _start_extra_parts_like_plain(self, std: float = 0.02) -> None:
        """Initialize the parts the plain layout lacks so that training starts as the plain layout's does; with the
        defaults (unit LayerNorm gain, random head) it learns far slower on a short budget (BENCHMARKS.md, "Masked
        LM: where the bert layout loses"). The embedding LayerNorm's gain starts at the scale of E + P (both
        N(0, std)), not 1: a unit gain makes every token's embedding of norm sqrt(D) in the residual stream, which
        the blocks' first writes (std / sqrt(2 L)) barely move. The head transform starts as nearly the identity."""
        if self.cfg.embedding_norm:
            nn.init.constant_(self.emb_ln.weight, std * math.sqrt(2))
        if self.cfg.head_transform:
            self.head.start_as_identity()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> final hidden states [B, T, D]. attention_mask [B, T]: 1 = token, 0 = pad;
        None means no padding (the faster unmasked attention path)."""
        x = self.drop(self.emb_ln(embed(self.tok_emb, self.pos_emb, input_ids)))  # [B, T, D]
        return self.encoder(x, attention_mask)

    def logits_at(self, hidden: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits of hidden [B, T, D]: at every position ([B, T, V]), or only where the
        boolean ``positions`` [B, T] is True ([M, V], row-major order, like ``labels[positions]``).
        The head transform, too, runs on the selected rows only."""
        if positions is not None:
            hidden = hidden[positions]  # [M, D]
        return F.linear(self.head(hidden), self.tok_emb.weight, self.out_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, V], or [M, V] at the masked ``positions`` [B, T] only: projecting every
        position onto the vocabulary would dominate the cost of training."""
        return self.logits_at(self.encode(input_ids, attention_mask), positions)


def layout_of(state_dict: dict[str, torch.Tensor], prefix: str = "") -> str:
    """The layout a saved state dict was written with, read from the parts it has."""
    if f"{prefix}emb_ln.weight" in state_dict:
        return "bert"
    return "xlm_roberta_xl" if f"{prefix}head.fc.weight" in state_dict else "plain"


def _earlier_layout(state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    """Checkpoints whose blocks and final LayerNorm sat on the model itself load into ``encoder``."""
    rename_keys(state_dict, prefix, {r"blocks\.": "encoder.blocks.", r"ln_f\.": "encoder.ln."})
