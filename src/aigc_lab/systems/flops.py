"""Training FLOPs of a Transformer stack, shared by the token systems' ``train_flops`` (their specs).

One training step is forward + backward = 3 x forward, and a multiply-add is 2 FLOPs. Per token, as in Kaplan
et al. (2020) and PaLM (Chowdhery et al., 2022): ``6 * N + 12 * L * d * C``, where N = the stack's non-embedding
parameters, L its layers, d the width and C the length attended over (the attention scores and the weighted
sum: 2 x 2 x C x d per layer forward; causal masks are not halved, as in PaLM). A tied output layer adds
``6 * V * d`` per predicted token. Embedding lookups count 0. Tokens are the non-pad ones, so padding lowers MFU.
"""

from __future__ import annotations


def stack_flops(n_params: int, n_layers: int, d_model: int, context: int, tokens: int) -> int:
    """Training FLOPs of a Transformer stack for ``tokens`` tokens attending over ``context`` positions."""
    return tokens * (6 * n_params + 12 * n_layers * d_model * context)


def output_flops(predicted: int, vocab_size: int, d_model: int) -> int:
    """Training FLOPs of the vocabulary projection at ``predicted`` positions."""
    return predicted * 6 * vocab_size * d_model
