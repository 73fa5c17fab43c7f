"""The masked LM network: config checks, padding, the masked-positions path, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aigc_lab.models.mlm import MaskedLM, MLMConfig
from aigc_lab.models.transformer import embed

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = dict(vocab_size=50, n_layers=2, d_model=32, n_heads=4, max_len=24, dropout=0.1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vocab_size": 0}, "vocab_size must be positive"),
        ({"n_heads": 5}, "divisible by n_heads"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"mlp_ratio": 0}, "mlp_ratio must be positive"),
        ({"max_len": -1}, "max_len must be positive"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        MLMConfig(**{**TINY, **change})


def test_shapes_and_tied_output():
    model = MaskedLM(MLMConfig(**TINY))
    ids = torch.randint(5, 50, (3, 10))
    assert model(ids).shape == (3, 10, 50)
    positions = torch.zeros(3, 10, dtype=torch.bool)
    positions[0, 1] = positions[2, 7] = True
    assert model(ids, positions=positions).shape == (2, 50)
    vocab_matrices = [n for n, p in model.named_parameters() if p.shape == (50, 32)]
    assert vocab_matrices == ["tok_emb.weight"] and model.out_bias.shape == (50,)  # the output layer is tok_emb
    with pytest.raises(ValueError, match="exceeds max_len"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_the_extra_parts_start_as_the_plain_layout_does():
    """The embedding LayerNorm hands the blocks a residual stream at the scale of the plain layout's embeddings, and
    the head transform starts as LN(GELU(h + 3)), nearly LN(h): the tied output reads the space the embeddings
    write into."""
    cfg = dict(TINY, d_model=64, dropout=0.0)
    bert, plain = MaskedLM(MLMConfig(**cfg, layout="bert")), MaskedLM(MLMConfig(**cfg, layout="plain"))
    ids = torch.randint(5, 50, (8, 24))
    with torch.no_grad():
        def stream_rms(model: MaskedLM) -> float:  # the blocks' input, before any block writes
            return model.emb_ln(embed(model.tok_emb, model.pos_emb, ids)).pow(2).mean().sqrt().item()

        assert 0.8 < stream_rms(bert) / stream_rms(plain) < 1.25
        hidden = F.layer_norm(torch.randn(5, 64), (64,))  # what the head reads: the final LayerNorm's output
        for layout in ("xlm_roberta_xl", "bert"):
            head = MaskedLM(MLMConfig(**cfg, layout=layout)).head
            assert torch.allclose(head(hidden), F.layer_norm(F.gelu(hidden + 3), (64,)), atol=1e-5)
            assert (head(hidden) - hidden).abs().mean() < 0.03


def test_a_fixed_head_dense_is_not_trained():
    """head_dense=fixed: no gradient reaches the head's dense layer, so neither the optimizer nor weight decay moves
    it; learned: it trains like any other weight."""
    from aigc_lab.systems.token_system import weight_decay_groups

    ids = torch.randint(5, 50, (4, 12))
    for head_dense, trained in (("fixed", False), ("learned", True)):
        model = MaskedLM(MLMConfig(**TINY, head_dense=head_dense))
        start = {k: v.clone() for k, v in model.head.fc.state_dict().items()}
        optimizer = torch.optim.AdamW(weight_decay_groups(model), lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            model(ids).logsumexp(-1).mean().backward()
            optimizer.step()
        moved = any(not torch.equal(v, start[k]) for k, v in model.head.fc.state_dict().items())
        assert moved == trained, head_dense
        assert not torch.equal(model.head.ln.weight, torch.ones(32))  # the head's LayerNorm learns either way


def test_masked_positions_match_full_logits():
    model = MaskedLM(MLMConfig(**TINY)).eval()
    ids = torch.randint(5, 50, (4, 12))
    positions = torch.rand(4, 12) < 0.3
    with torch.no_grad():
        assert torch.allclose(model(ids, positions=positions), model(ids)[positions], atol=1e-5)


def test_attention_ignores_padding():
    model = MaskedLM(MLMConfig(**TINY)).eval()
    ids = torch.randint(5, 50, (2, 8))
    padded = torch.cat([ids, torch.zeros(2, 6, dtype=torch.long)], dim=1)  # 6 pads at the end
    mask = torch.cat([torch.ones(2, 8), torch.zeros(2, 6)], dim=1).bool()
    garbage = padded.clone()
    garbage[:, 8:] = torch.randint(5, 50, (2, 6))  # what sits under the pads must not matter either
    with torch.no_grad():
        plain = model.encode(ids)
        assert torch.allclose(model.encode(padded, mask)[:, :8], plain, atol=1e-5)
        assert torch.allclose(model.encode(garbage, mask)[:, :8], plain, atol=1e-5)
        assert not torch.allclose(model.encode(padded)[:, :8], plain, atol=1e-3)  # unmasked pads do leak


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = MaskedLM(MLMConfig(**{**TINY, "dropout": 0.0}))
    ids = torch.randint(5, 50, (8, 16))
    positions = torch.rand(8, 16) < 0.25
    inputs = torch.where(positions, 4, ids)  # 4 = [MASK]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(inputs, positions=positions), ids[positions])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses[::10]


def test_warmup_then_decay_schedule():
    from aigc_lab.systems.schedule import lr_factor

    cosine = [lr_factor(s, total=100, warmup=10, schedule="cosine", floor=0.1) for s in range(101)]
    assert cosine[0] == pytest.approx(0.1) and cosine[9] == pytest.approx(1.0) and cosine[10] == pytest.approx(1.0)
    assert cosine[55] == pytest.approx(0.55) and cosine[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    assert lr_factor(55, total=100, warmup=10, schedule="linear", floor=0.0) == pytest.approx(0.5)
    assert lr_factor(99, total=100, warmup=10, schedule="constant", floor=0.0) == 1.0
