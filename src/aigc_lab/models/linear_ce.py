"""Cross-entropy of a linear output layer, computed a chunk of rows at a time ("fused linear cross-entropy").

    loss = mean_i [ (1 - eps) (lse_i - z_i[y_i]) + eps (lse_i - mean_v z_i[v]) ],   z = h W^T + b,  lse = logsumexp(z)

``F.cross_entropy(F.linear(h, W, b), y, label_smoothing=eps)`` keeps the whole [M, V] logits alive for the backward
pass, with their float32 copy, log-softmax and gradient: several times M x V floats at the step's peak. Here each
chunk's logits exist only while the chunk is worked on: the forward pass computes the loss and, in training, the
gradients with respect to h, W and b at once (dz = softmax(z) - (1 - eps) onehot(y) - eps / V, over M), and the
backward pass only scales them. Memory of the output layer: chunk x V instead of M x V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ROWS = 512


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                         label_smoothing: float = 0.0, reduction: str = "mean",
                         chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """hidden [M, D], weight [V, D], bias [V] or None, target [M] -> the mean (or ``reduction="sum"``) loss, equal to
    ``F.cross_entropy(F.linear(hidden, weight, bias).float(), target, label_smoothing=...)``."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    scale = 1.0 / max(len(target), 1) if reduction == "mean" else 1.0
    if torch.is_grad_enabled() and any(t.requires_grad for t in (hidden, weight, bias)):
        return _LinearCrossEntropy.apply(hidden, weight, bias, target, label_smoothing, scale, chunk_rows)
    return _chunks(hidden, weight, bias, target, label_smoothing, scale, chunk_rows, None)


def _chunks(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, target: torch.Tensor, eps: float,
            scale: float, chunk_rows: int, grads: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
    """The loss, chunk by chunk; with ``grads`` = (dh [M, D], dW [V, D], db [V]) also their gradients, in place."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    vocab = weight.shape[0]
    for start in range(0, len(target), chunk_rows):
        h, y = hidden[start : start + chunk_rows], target[start : start + chunk_rows]
        z = F.linear(h, weight, bias).float()  # [C, V]
        lse = torch.logsumexp(z, dim=-1)  # [C]
        nll = lse - z.gather(1, y[:, None]).squeeze(1)
        smooth = lse - z.mean(dim=-1) if eps else torch.zeros_like(lse)
        total = total + ((1 - eps) * nll + eps * smooth).sum()
        if grads is not None:
            dz = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            dz.scatter_add_(1, y[:, None], torch.full_like(lse[:, None], -(1 - eps)))
            if eps:
                dz.sub_(eps / vocab)
            dz.mul_(scale)
            dh, dw, db = grads
            dh[start : start + chunk_rows] = dz.to(h.dtype) @ weight.to(h.dtype)
            dw.add_(dz.t().to(h.dtype) @ h)
            db.add_(dz.sum(dim=0))
    return total * scale


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, eps, scale, chunk_rows):  # noqa: ANN001, ANN205
        grads = (torch.empty_like(hidden), torch.zeros_like(weight, dtype=torch.float32),
                 torch.zeros_like(bias, dtype=torch.float32))
        loss = _chunks(hidden, weight, bias, target, eps, scale, chunk_rows, grads)
        ctx.save_for_backward(*grads)
        ctx.dtypes = (weight.dtype, bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001, ANN205
        dh, dw, db = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (dh * grad_loss.to(dh.dtype), (dw * grad_loss).to(weight_dtype), (db * grad_loss).to(bias_dtype),
                None, None, None, None)
