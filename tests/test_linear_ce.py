"""models/linear_ce.py: the chunked linear cross-entropy equals F.cross_entropy of the full logits, loss and
gradients, with and without label smoothing, in training and in evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aigc_lab.models.linear_ce import linear_cross_entropy


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_equals_the_full_logits(eps, reduction):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=g, requires_grad=True)
    weight = torch.randn(30, 16, generator=g, requires_grad=True)
    bias = torch.randn(30, generator=g, requires_grad=True)
    target = torch.randint(0, 30, (50,), generator=g)
    ours = linear_cross_entropy(hidden, weight, bias, target, eps, reduction, chunk_rows=7)
    ours_grads = torch.autograd.grad(3 * ours, (hidden, weight, bias))
    theirs = F.cross_entropy(F.linear(hidden, weight, bias), target, label_smoothing=eps, reduction=reduction)
    their_grads = torch.autograd.grad(3 * theirs, (hidden, weight, bias))
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(ours_grads, their_grads):
        torch.testing.assert_close(a, b)
    with torch.no_grad():  # evaluation: the loss alone
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, bias, target, eps, reduction, 7), theirs)


def test_under_bf16_autocast_it_stays_close():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 32, generator=g, requires_grad=True)
    weight = torch.randn(100, 32, generator=g, requires_grad=True)
    target = torch.randint(0, 100, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, None, target, 0.1, chunk_rows=16)
        theirs = F.cross_entropy(F.linear(hidden, weight).float(), target, label_smoothing=0.1)
    ours.backward()
    grad_ours = weight.grad.clone()
    weight.grad = None
    theirs.backward()
    assert weight.grad.dtype == grad_ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=0.05, rtol=0.01)
    torch.testing.assert_close(grad_ours, weight.grad, atol=0.02, rtol=0.05)
