"""The seq2seq network and its decoding: config checks, shapes, masking, the key/value cache, beam search."""

from __future__ import annotations

import math

import pytest
import torch

from aigc_lab.models.decoding import beam_search, gnmt_length_penalty, greedy_decode, search
from aigc_lab.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = dict(vocab_size=30, n_enc_layers=2, n_dec_layers=2, d_model=32, n_heads=4, max_len=24, dropout=0.1)
PAD, BOS, EOS = 0, 2, 3


def _model(seed: int = 0, **change) -> Seq2SeqTransformer:
    """A float64 model in eval mode with scaled-up embeddings: peaked next-token distributions, so that
    decoding makes real choices (and float64 keeps cached and uncached arithmetic from splitting near-ties)."""
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(Seq2SeqConfig(**{**TINY, **change})).double().eval()
    with torch.no_grad():
        for table in (model.tok_emb, model.src_pos, model.tgt_pos):
            table.weight.mul_(25.0)
        model.out_bias[EOS] = 2.0  # some hypotheses end early, others run to max_len
    return model


def _source(b: int = 5, s: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """src [B, S] (tokens, [EOS], then [PAD]) and its mask, with rows of different lengths."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, TINY["vocab_size"], (b, s), generator=g)
    lengths = torch.tensor([s, s - 3, 4, s - 1, 2][:b])
    mask = torch.arange(s)[None, :] < lengths[:, None]
    src[~mask] = PAD
    src[torch.arange(b), lengths - 1] = EOS
    return src, mask


def _targets(b: int = 5, t: int = 10, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randint(4, TINY["vocab_size"], (b, t), generator=g)
    tgt[:, 0] = BOS
    return tgt


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vocab_size": 0}, "vocab_size must be positive"),
        ({"n_enc_layers": 0}, "n_enc_layers must be positive"),
        ({"n_dec_layers": -1}, "n_dec_layers must be positive"),
        ({"n_heads": 5}, "divisible by n_heads"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"mlp_ratio": 0}, "mlp_ratio must be positive"),
        ({"max_len": 0}, "max_len must be positive"),
    ],
)
def test_config_validation(change, message):
    with pytest.raises(ValueError, match=message):
        Seq2SeqConfig(**{**TINY, **change})


def test_shapes_and_tied_output():
    model = _model()
    src, mask = _source()
    tgt = _targets()
    assert model.encode(src, mask).shape == (5, 9, 32)
    assert model(src, mask, tgt).shape == (5, 10, 30)
    names = {n for n, _ in model.named_parameters()}
    assert "out_bias" in names and not any(n.startswith("head") for n in names)  # the output layer is tok_emb
    untied = Seq2SeqTransformer(Seq2SeqConfig(**{**TINY, "tie_embeddings": False}))
    assert untied.head.weight.shape == (30, 32)
    with pytest.raises(ValueError, match="target length 25 exceeds max_len 24"):
        model(src, mask, torch.full((5, 25), BOS))
    with pytest.raises(ValueError, match="source length 25 exceeds max_len 24"):
        model.encode(torch.full((1, 25), 5))


def test_decoder_is_causal():
    model = _model()
    src, mask = _source()
    tgt = _targets()
    changed = tgt.clone()
    changed[:, 6:] = (tgt[:, 6:] - 4 + 1) % (TINY["vocab_size"] - 4) + 4  # every later token differs
    with torch.no_grad():
        a, b = model(src, mask, tgt), model(src, mask, changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-10)  # positions 0..5 never see positions >= 6
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_source_padding_is_ignored():
    model = _model()
    src, mask = _source()
    tgt = _targets()
    garbage = src.clone()
    garbage[~mask] = torch.randint(4, 30, (int((~mask).sum()),))  # what sits under the pads must not matter
    wider = torch.cat([src, torch.zeros(5, 4, dtype=torch.long)], dim=1)  # nor extra padding
    wider_mask = torch.cat([mask, torch.zeros(5, 4, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        plain = model(src, mask, tgt)
        assert torch.allclose(model(garbage, mask, tgt), plain, atol=1e-10)
        assert torch.allclose(model(wider, wider_mask, tgt), plain, atol=1e-10)
        assert torch.allclose(model.encode(garbage, mask)[mask], model.encode(src, mask)[mask], atol=1e-10)


def test_cached_decoding_matches_full_decoding():
    model = _model()
    src, mask = _source()
    tgt = _targets()
    with torch.no_grad():
        memory = model.encode(src, mask)
        full = model.decode(tgt, memory, mask)  # [B, T, V]
        cache = model.new_cache()
        steps = [model.decode(tgt[:, t : t + 1], memory, mask, cache) for t in range(tgt.shape[1])]
        assert cache.length == tgt.shape[1]
        assert cache.cross_kv[0].length == src.shape[1]  # the memory's keys/values, computed once
        assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-10)
        cache = model.new_cache()  # several new positions after cached ones: a causal mask aligned bottom-right
        parts = [model.decode(tgt[:, a:b], memory, mask, cache) for a, b in ((0, 4), (4, 7), (7, 10))]
        assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-10)
        with pytest.raises(ValueError, match="exceeds max_len"):
            model.decode(torch.full((5, 15), 5), memory, mask, cache)  # 10 cached + 15 > 24


@pytest.mark.parametrize("beam_size", [1, 2, 4])
def test_cache_gives_the_same_tokens(beam_size):
    model = _model()
    src, mask = _source()
    cached = beam_search(model, src, mask, BOS, EOS, beam_size, max_len=12, use_cache=True)
    uncached = beam_search(model, src, mask, BOS, EOS, beam_size, max_len=12, use_cache=False)
    assert cached == uncached
    assert len(cached) == 5 and all(len(ids) <= 12 and EOS not in ids for ids in cached)
    if beam_size == 1:
        greedy = greedy_decode(model, src, mask, BOS, EOS, max_len=12, use_cache=True)
        assert greedy == greedy_decode(model, src, mask, BOS, EOS, max_len=12, use_cache=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_of_one_is_greedy(seed):
    model = _model(seed)
    src, mask = _source(seed=seed + 10)
    greedy = greedy_decode(model, src, mask, BOS, EOS, max_len=15)
    assert beam_search(model, src, mask, BOS, EOS, beam_size=1, max_len=15) == greedy
    assert beam_search(model, src, mask, BOS, EOS, beam_size=1, max_len=15, length_penalty=0.0) == greedy
    assert search(model, src, mask, BOS, EOS, max_len=15, beam_size=1) == greedy


def test_decoding_is_batched_per_sentence():
    model = _model()
    src, mask = _source()
    together = beam_search(model, src, mask, BOS, EOS, beam_size=3, max_len=12)
    for i in range(len(src)):
        n = int(mask[i].sum())
        alone = beam_search(model, src[i : i + 1, :n], mask[i : i + 1, :n], BOS, EOS, beam_size=3, max_len=12)
        assert alone == [together[i]]


def test_beam_size_below_one():
    model = _model()
    src, mask = _source()
    with pytest.raises(ValueError, match="beam_size must be >= 1, got 0"):
        beam_search(model, src, mask, BOS, EOS, beam_size=0, max_len=5)


class ChainModel:
    """A stand-in for the network whose next-token probabilities depend only on the previous token."""

    def __init__(self, transitions: dict[tuple[int, int], float], vocab_size: int = 7, max_len: int = 10):
        self.cfg = Seq2SeqConfig(vocab_size=vocab_size, max_len=max_len, d_model=4, n_heads=1)
        table = torch.full((vocab_size, vocab_size), 1e-9, dtype=torch.float64)
        given = {prev for prev, _ in transitions}
        for prev in range(vocab_size):
            if prev not in given:
                table[prev, EOS] = 1.0  # other tokens end the sentence
        for (prev, nxt), p in transitions.items():
            table[prev, nxt] = p
        self.log_probs = (table / table.sum(dim=1, keepdim=True)).log()  # [V, V]

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros(src.shape[0], src.shape[1], 4, dtype=torch.float64)

    def decode(self, tgt_ids, memory, src_mask=None, cache=None) -> torch.Tensor:
        return self.log_probs[tgt_ids]  # [B, T, V]

    def new_cache(self) -> _NoCache:
        return _NoCache()


class _NoCache:
    def reorder(self, index: torch.Tensor) -> None:
        pass


A, B, C = 4, 5, 6


def test_beam_search_finds_what_greedy_misses():
    # greedy: A (0.6) then [EOS] (0.5) = 0.30; the best: B (0.4) then [EOS] (0.9) = 0.36
    chain = ChainModel({(BOS, A): 0.6, (BOS, B): 0.4, (A, EOS): 0.5, (A, A): 0.25, (A, B): 0.25,
                        (B, EOS): 0.9, (B, A): 0.1})
    src = torch.zeros(2, 3, dtype=torch.long)
    assert greedy_decode(chain, src, None, BOS, EOS, max_len=5) == [[A], [A]]
    for use_cache in (True, False):
        assert beam_search(chain, src, None, BOS, EOS, 2, max_len=5, use_cache=use_cache) == [[B], [B]]


def test_length_penalty_favours_longer_hypotheses():
    # [] (p 0.5, length 1 with [EOS]) vs [C] (p 0.5 * 0.99, length 2): alpha 0 keeps the likelier, alpha 1 the longer
    chain = ChainModel({(BOS, EOS): 0.5, (BOS, C): 0.5, (C, EOS): 0.99, (C, A): 0.01})
    src = torch.zeros(1, 2, dtype=torch.long)
    assert beam_search(chain, src, None, BOS, EOS, 2, max_len=5, length_penalty=0.0) == [[]]
    assert beam_search(chain, src, None, BOS, EOS, 2, max_len=5, length_penalty=1.0) == [[C]]
    assert gnmt_length_penalty(7, 1.0) == 2.0 and gnmt_length_penalty(3, 0.0) == 1.0
    assert math.isclose(gnmt_length_penalty(1, 0.6), 1.0)


def test_unfinished_hypotheses_stop_at_max_len():
    chain = ChainModel({(BOS, A): 1.0, (A, A): 1.0})  # never ends
    src = torch.zeros(1, 2, dtype=torch.long)
    assert greedy_decode(chain, src, None, BOS, EOS, max_len=4) == [[A, A, A, A]]
    assert beam_search(chain, src, None, BOS, EOS, 3, max_len=4) == [[A, A, A, A]]
