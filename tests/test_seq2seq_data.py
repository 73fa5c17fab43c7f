"""Parallel data for the seq2seq model: TSV reading, the token-budget batch sampler, tokenizers, batches."""

from __future__ import annotations

import logging
import re
from collections import Counter

import pytest
import torch

from aigc_lab.data.parallel import (
    PairCollator,
    ParallelDataModule,
    TokenBudgetBatchSampler,
    detokenize,
    parse_pairs,
    synthetic_pairs,
)
from aigc_lab.data.tokenizer import SEQ2SEQ_SPECIAL_TOKENS, load_or_train_tokenizer, load_tokenizer, symbol_tokenizer
from aigc_lab.errors import CorpusError, DataNotFoundError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_parse_pairs_skips_and_counts_malformed_lines(tmp_path):
    path = tmp_path / "pairs.tsv"
    lines = ["hello\tbonjour", "no tab here", "", " \tvide", "vide\t ", "a\tb\tc", "  spaced  \t  espacé \r"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs, skipped, n_lines = parse_pairs(path.read_text(encoding="utf-8"))
    assert pairs == [("hello", "bonjour"), ("spaced", "espacé")]
    assert skipped == Counter({"no tab": 1, "blank": 1, "empty side": 2, "more than one tab": 1})
    assert n_lines == 7


def _lengths(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Source lengths in [2, 40) and target lengths close to them, as in real parallel text."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, 40, (n,), generator=g)
    tgt = (src + torch.randint(-2, 4, (n,), generator=g)).clamp(min=2)
    return src.tolist(), tgt.tolist()


def _padding_share(batches: list[list[int]], src: list[int], tgt: list[int]) -> float:
    padded = sum(len(b) * (max(src[i] for i in b) + max(tgt[i] for i in b)) for b in batches)
    return 1.0 - sum(src[i] + tgt[i] for b in batches for i in b) / padded


def test_batches_respect_the_token_budget_and_cover_every_pair():
    src, tgt = _lengths(3000)
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=600, train=True, sort_chunk=500, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(3000))
    assert all(len(b) * (max(src[i] for i in b) + max(tgt[i] for i in b)) <= 600 for b in batches)
    share = sampler.padding_share()
    assert share == pytest.approx(_padding_share(batches, src, tgt))
    unsorted = [list(range(i, min(i + 10, 3000))) for i in range(0, 3000, 10)]  # batches of 10 in data order
    assert share < 0.15 < _padding_share(unsorted, src, tgt)  # similar lengths together: little padding
    second = list(sampler)  # the next epoch: another order
    assert second != batches and sorted(i for b in second for i in b) == list(range(3000))
    again = TokenBudgetBatchSampler(src, tgt, max_tokens=600, train=True, sort_chunk=500, seed=3)
    assert list(again) == batches  # a fixed function of the seed and the epoch


def test_the_budget_counts_the_padding_the_collator_adds():
    """With pad_multiple, the batch tensors the collator builds hold at most max_tokens source + target tokens
    (a pair bigger than the budget alone excepted), and the padding share counts the rounded lengths."""
    src, tgt = _lengths(2000, seed=5)
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=640, train=True, sort_chunk=400, seed=1, pad_multiple=8)
    collate = PairCollator(pad_id=0, bos_id=1, eos_id=2, pad_multiple=8)
    padded = real = 0
    for batch in sampler.batches(0):
        # the data module's lengths: source ids + [EOS], target ids + [EOS] (or [BOS] + ids)
        tensors = collate([([5] * (src[i] - 1), [6] * (tgt[i] - 1), "", "") for i in batch])
        size = tensors["src"].numel() + tensors["tgt_in"].numel()
        assert size <= 640
        padded, real = padded + size, real + sum(src[i] + tgt[i] for i in batch)
    assert sampler.padding_share() == pytest.approx(1 - real / padded)
    unaware = TokenBudgetBatchSampler(src, tgt, max_tokens=640, train=True, sort_chunk=400, seed=1)
    assert len(unaware.batches(0)) < len(sampler.batches(0))  # the same budget counted before rounding: bigger


def test_evaluation_batches_are_fixed_and_sharded():
    src, tgt = _lengths(500)
    one = TokenBudgetBatchSampler(src, tgt, max_tokens=800, seed=1)
    assert list(one) == list(one) == list(TokenBudgetBatchSampler(src, tgt, max_tokens=800, seed=2))
    ranks = [TokenBudgetBatchSampler(src, tgt, max_tokens=800, num_replicas=2, rank=r) for r in (0, 1)]
    assert sorted(i for s in ranks for b in s for i in b) == list(range(500))
    train = [TokenBudgetBatchSampler(src, tgt, max_tokens=800, train=True, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(train[0]) == len(train[1])  # DDP: every rank takes as many steps
    assert not {i for b in train[0] for i in b} & {i for b in train[1] for i in b}


def test_collator_shifts_targets_and_masks_padding():
    collate = PairCollator(pad_id=0, bos_id=2, eos_id=3)
    batch = collate([([7, 8, 9], [10, 11], "a b c", "x y"), ([5], [12, 13, 14], "d", "z w v")])
    assert batch["src"].tolist() == [[7, 8, 9, 3], [5, 3, 0, 0]]
    assert batch["src_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["tgt_in"].tolist() == [[2, 10, 11, 0], [2, 12, 13, 14]]
    assert batch["tgt_out"].tolist() == [[10, 11, 3, 0], [12, 13, 14, 3]]
    assert batch["source"] == ["a b c", "d"] and batch["reference"] == ["x y", "z w v"]


def test_synthetic_pairs_are_reversals_fixed_by_the_seed():
    pairs = synthetic_pairs(50, 3, 6, 10, seed="0-train")
    assert pairs == synthetic_pairs(50, 3, 6, 10, seed="0-train") != synthetic_pairs(50, 3, 6, 10, seed="0-val")
    for source, target in pairs:
        assert target.split() == source.split()[::-1] and 3 <= len(source.split()) <= 6
        assert set(source.split()) <= set("0123456789")


def test_symbol_tokenizer_round_trip():
    tok = symbol_tokenizer("0123456789abc")
    assert [tok.token_to_id(t) for t in SEQ2SEQ_SPECIAL_TOKENS] == [0, 1, 2, 3]
    ids = tok.encode("3 a 7 7", add_special_tokens=False).ids
    assert ids == [7, 14, 11, 11]
    assert detokenize(tok, [ids + [3, 0]]) == ["3 a 7 7"]  # special tokens are dropped


def test_bpe_tokenizer_round_trip_and_cache(tsv_corpus, tmp_path):
    files = [tsv_corpus["train"]]
    texts = [tsv_corpus["train"].read_text(encoding="utf-8").replace("\t", "\n")]
    path = load_or_train_tokenizer(files, lambda: texts, tmp_path, vocab_size=320, kind="bpe")
    assert load_or_train_tokenizer(files, lambda: pytest.fail("trained again"), tmp_path, 320, kind="bpe") == path
    wordpiece = load_or_train_tokenizer(files, lambda: texts, tmp_path, vocab_size=320)
    assert wordpiece != path  # another kind, another cache entry
    tok = load_tokenizer(path, SEQ2SEQ_SPECIAL_TOKENS)
    assert [tok.token_to_id(t) for t in SEQ2SEQ_SPECIAL_TOKENS] == [0, 1, 2, 3]
    for text in ("le fichier écrit l'en-tête", "Zoë & 日本語 ~ unseen characters!"):
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.token_to_id("[UNK]") not in ids  # byte-level: nothing is unknown
        assert detokenize(tok, [ids]) == [text]


def _dm(corpus, cache, **kw) -> ParallelDataModule:
    args = dict(train_file=str(corpus["train"]), val_file=str(corpus["val"]), test_file=str(corpus["test"]),
                vocab_size=320, max_len=64, max_tokens=512, eval_max_tokens=1024, cache_dir=str(cache))
    return ParallelDataModule(**{**args, **kw})


def test_datamodule_batches_and_reports_skipped_lines(tsv_corpus, tmp_path, caplog):
    dm = _dm(tsv_corpus, tmp_path)
    with caplog.at_level(logging.INFO):
        dm.prepare_data()
        dm.setup("fit")
    assert f"{tsv_corpus['train']}: skipped 4 of 304 lines (empty side: 2, no tab: 2)" in caplog.text
    assert "% padding" in caplog.text
    assert len(dm.datasets["train"]) == 300 and len(dm.datasets["val"]) == 40
    batch = next(iter(dm.train_dataloader()))
    b, s = batch["src"].shape
    assert batch["src_mask"].shape == (b, s) and batch["tgt_in"].shape == batch["tgt_out"].shape
    assert b * (s + batch["tgt_in"].shape[1]) <= 512
    assert (batch["tgt_in"][:, 0] == dm.special_id("[BOS]")).all()
    assert len(batch["reference"]) == b
    assert dm.tokenizer.get_vocab_size() <= 320


def test_too_long_pairs_are_skipped(tsv_corpus, tmp_path, caplog):
    dm = _dm(tsv_corpus, tmp_path, max_len=6, max_tokens=64, eval_max_tokens=64)
    dm.setup("fit")
    assert "too long:" in caplog.text
    assert all(n <= 6 for n in dm.datasets["train"].src_lengths + dm.datasets["train"].tgt_lengths)


def test_no_usable_line_is_one_clear_error(tsv_corpus, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab\nnone here either\n\n")
    message = f"no usable source<TAB>target pair in {bad} (data.train_file): 3 lines, skipped blank: 1, no tab: 2"
    with pytest.raises(CorpusError, match=re.escape(message)):
        _dm(tsv_corpus, tmp_path, train_file=str(bad)).prepare_data()
    with pytest.raises(DataNotFoundError, match="TSV file not found: .*missing.tsv"):
        _dm(tsv_corpus, tmp_path, val_file=str(tmp_path / "missing.tsv"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max_tokens": 40}, "must be >= 2 \\* max_len"),
        ({"task": "nope"}, "task must be tsv or synthetic"),
        ({"task": "synthetic", "synthetic_max_len": 100}, "synthetic_max_len"),
        ({"task": "synthetic", "synthetic_symbols": 99}, "synthetic_symbols must be in"),
        ({"vocab_size": 4}, "vocab_size must be > 4"),
    ],
)
def test_bad_settings(tsv_corpus, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        _dm(tsv_corpus, tmp_path, **change)
