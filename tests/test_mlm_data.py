"""Text data for the masked LM: masking, the tokenizer and its cache, batches, bad input."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

from aigc_lab.data import tokenizer as tokenizer_mod
from aigc_lab.data.masking import IGNORE_INDEX, MaskingCollator
from aigc_lab.data.text import TextDataModule
from aigc_lab.data.tokenizer import SPECIAL_TOKENS, load_or_train_tokenizer, load_tokenizer, read_text
from aigc_lab.errors import CorpusError, DataNotFoundError, UserError

VOCAB = 1000
pytestmark = pytest.mark.usefixtures("single_thread")


def _collator(**kw) -> MaskingCollator:
    return MaskingCollator(VOCAB, mask_id=4, pad_id=0, special_ids=range(5), **kw)


def _batch(b: int = 256, t: int = 128) -> torch.Tensor:
    ids = torch.randint(5, VOCAB, (b, t), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    ids[:, 60:64] = 1  # some [UNK]
    return ids


def test_masking_rate_and_80_10_10_split():
    ids = _batch()
    out = _collator(seed=7)((torch.arange(len(ids)), ids))
    picked = out["labels"] != IGNORE_INDEX
    eligible = ids >= 5
    assert torch.equal(out["labels"][picked], ids[picked])
    assert abs(picked.sum().item() / eligible.sum().item() - 0.15) < 0.01
    n = picked.sum().item()
    as_mask = (out["input_ids"][picked] == 4).sum().item() / n
    unchanged = (out["input_ids"][picked] == ids[picked]).sum().item() / n
    randomized = 1.0 - as_mask - unchanged
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.015 and abs(randomized - 0.1) < 0.015
    assert (out["input_ids"][picked] >= 4).all()  # random replacements are never special tokens
    assert torch.equal(out["input_ids"][~picked], ids[~picked])
    assert "attention_mask" not in out  # packed blocks: nothing padded


def test_never_masks_special_or_pad_tokens():
    rows = [torch.tensor([2, *range(5, 5 + n), 1, 3]) for n in (3, 40, 17)]  # line by line: padded per batch
    collate = _collator(mask_rate=0.9, seed=0)
    original, attention = collate.pad(rows)
    special = original < 5  # [PAD] [UNK] [CLS] [SEP]
    assert special.sum() == 3 * 3 + (43 - 6) + (43 - 20)
    for _ in range(20):
        out = collate((torch.arange(3), rows))
        assert torch.equal(out["attention_mask"], attention)
        assert (out["labels"][special] == IGNORE_INDEX).all()
        assert torch.equal(out["input_ids"][special], original[special])  # specials and pads stay as they are
        assert (out["labels"][~special] != IGNORE_INDEX).float().mean() > 0.8


def test_evaluation_masks_depend_only_on_seed_and_index():
    ids = _batch(8, 32)
    a = _collator(seed=3)((torch.arange(8), ids))
    b = _collator(seed=3)((torch.arange(4, 8), ids[4:]))  # another batch split, a fresh collator
    assert torch.equal(a["labels"][4:], b["labels"]) and torch.equal(a["input_ids"][4:], b["input_ids"])
    c = _collator(seed=4)((torch.arange(8), ids))
    assert not torch.equal(a["labels"], c["labels"])


def test_training_masks_follow_the_run_seed():
    ids = _batch(8, 32)
    outs = []
    for _ in range(2):
        torch.manual_seed(42)
        collate = pickle.loads(pickle.dumps(_collator()))  # picklable, as DataLoader workers need
        outs.append([collate((torch.arange(8), ids))["labels"] for _ in range(2)])
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], outs[0][1])  # successive batches differ


def test_mask_rate_outside_unit_interval():
    with pytest.raises(ValueError, match=r"mask_rate must be in \(0, 1\), got 1.5"):
        _collator(mask_rate=1.5)


def test_tokenizer_round_trip_and_cache(text_corpus, tmp_path, monkeypatch):
    files = [text_corpus["train"]]
    reads = []

    def read():
        reads.append(1)
        return [read_text(files[0])]

    path = load_or_train_tokenizer(files, read, tmp_path, vocab_size=300)
    assert path.parent == tmp_path / "tokenizers" and reads == [1]
    tok = load_tokenizer(path)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    enc = tok.encode("The parser [MASK] the file.")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]" and "[MASK]" in enc.tokens
    assert tok.decode(tok.encode("The parser reads the file.").ids) == "The parser reads the file."

    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(tokenizer_mod, "train_wordpiece", lambda *a, **k: pytest.fail("trained again"))
    assert load_or_train_tokenizer(files, read, tmp_path, vocab_size=300) == path
    assert path.stat().st_mtime_ns == mtime and reads == [1]


def test_new_settings_train_a_new_tokenizer(text_corpus, tmp_path):
    files = [text_corpus["train"]]
    first = load_or_train_tokenizer(files, lambda: [read_text(files[0])], tmp_path, vocab_size=300)
    second = load_or_train_tokenizer(files, lambda: [read_text(files[0])], tmp_path, vocab_size=280)
    assert first != second and second.is_file()


def _dm(corpus, cache, **kw) -> TextDataModule:
    args = dict(train_files=str(corpus["train"]), val_files=str(corpus["val"]), test_files=str(corpus["test"]),
                vocab_size=300, block_size=32, batch_size=8, eval_batch_size=16, cache_dir=str(cache))
    return TextDataModule(**{**args, **kw})


def test_packed_blocks(text_corpus, tmp_path):
    dm = _dm(text_corpus, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 32) and batch["input_ids"].dtype == torch.int64
    assert (batch["input_ids"][:, 0] == 2).all() and (batch["input_ids"][:, -1] == 3).all()
    assert "attention_mask" not in batch
    val = [b["labels"] for b in dm.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(val, [b["labels"] for b in dm.val_dataloader()]))  # fixed masks
    assert len(list((tmp_path / "tokens").glob("*/manifest.json"))) == 3  # one token cache per split


def test_prepare_data_works_once_per_data_module(text_corpus, tmp_path, monkeypatch):
    """The launcher prepares the data before anything is written; Lightning's fit and test call the hook again."""
    from lightning import LightningDataModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    reads = []
    token_ids = TextDataModule._token_ids
    monkeypatch.setattr(TextDataModule, "_token_ids", lambda self, *a: reads.append(a[0]) or token_ids(self, *a))
    dm = _dm(text_corpus, tmp_path)
    assert is_overridden("prepare_data", dm, LightningDataModule)  # Lightning still sees the hook
    dm.prepare_data()
    assert reads == ["train", "val", "test"]
    dm.prepare_data()
    assert reads == ["train", "val", "test"]


def test_line_by_line(text_corpus, tmp_path):
    dm = _dm(text_corpus, tmp_path, line_by_line=True, block_size=16)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[1] <= 16 and batch["attention_mask"].shape == batch["input_ids"].shape
    lengths = batch["attention_mask"].sum(1)
    rows = torch.arange(len(lengths))
    assert (batch["input_ids"][rows, lengths - 1] == 3).all()  # each line ends with [SEP] before its pads


def test_tokenizer_is_saved_with_the_run_and_reloadable(text_corpus, tmp_path):
    dm = _dm(text_corpus, tmp_path / "cache")
    dm.setup()
    saved = tmp_path / "tokenizer.json"
    dm.tokenizer.save(str(saved))
    again = _dm(text_corpus, tmp_path / "other_cache", tokenizer_path=str(saved))
    again.setup()
    assert again.tokenizer.to_str() == dm.tokenizer.to_str()
    assert not (tmp_path / "other_cache" / "tokenizers").exists()  # loaded, not trained


def test_missing_file_names_the_path_and_the_fix(text_corpus, tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "nope.txt")) as err:
        _dm(text_corpus, tmp_path, train_files=str(tmp_path / "nope.txt"))
    assert "AIGC_DATA_DIR" in str(err.value) and "data.train_files" in str(err.value)
    with pytest.raises(DataNotFoundError, match="no_match"):
        _dm(text_corpus, tmp_path, val_files=str(tmp_path / "no_match*.txt"))
    with pytest.raises(DataNotFoundError, match="tokenizer not found"):
        _dm(text_corpus, tmp_path, tokenizer_path=str(tmp_path / "tok.json")).setup()


def test_empty_and_short_corpora(text_corpus, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(CorpusError, match=f"empty corpus: no text in {empty}"):
        _dm(text_corpus, tmp_path, train_files=str(empty)).prepare_data()
    short = tmp_path / "short.txt"
    short.write_text("The parser reads the file.\n")
    with pytest.raises(CorpusError, match="data.block_size=32 needs 30 tokens per block"):
        _dm(text_corpus, tmp_path, val_files=str(short)).setup()
    assert issubclass(CorpusError, UserError)


def test_invalid_utf8_is_replaced_with_a_warning(text_corpus, tmp_path, caplog):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(text_corpus["train"].read_bytes() + b"caf\xe9 \xff\xfe ok \xef\xbf\xbd\n")
    with caplog.at_level(logging.WARNING):
        text = read_text(bad)
    assert "not valid UTF-8: 3 undecodable byte sequence(s)" in caplog.text  # the genuine U+FFFD is not counted
    assert text.endswith("caf\ufffd \ufffd\ufffd ok \ufffd\n")
    dm = _dm(text_corpus, tmp_path, train_files=str(bad))
    dm.setup()  # trains on it all the same
    assert len(dm.datasets["train"]) > 0


def test_fill_mask_report_on_padded_lines(text_corpus, tmp_path):
    from aigc_lab.models.mlm import MaskedLM, MLMConfig
    from aigc_lab.systems.mlm import fill_mask_report

    dm = _dm(text_corpus, tmp_path, line_by_line=True)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    model = MaskedLM(MLMConfig(vocab_size=dm.vocab_size, n_layers=1, d_model=16, n_heads=2, max_len=32))
    report = fill_mask_report(model, dm.tokenizer, {k: v[:2] for k, v in batch.items()}, top_k=2)
    assert report.startswith("**1.** `[CLS]") and "**2.**" in report and "truth:" in report
    assert "[PAD]" not in report
