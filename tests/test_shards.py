"""Token shards (data/shards.py): streamed, parallel tokenization into memory-mapped arrays of the smallest id type,
the same ids whatever the number of processes and shards, and a cache that is never stale or half-written."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from aigc_lab.data import shards
from aigc_lab.data.parallel import ParallelDataModule
from aigc_lab.data.shards import Concatenated, id_dtype, jobs_for, line_ranges
from aigc_lab.data.text import TextDataModule, encode_lines
from aigc_lab.data.tokenizer import load_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


def text_module(corpus, cache, **kw) -> TextDataModule:
    args = {"train_files": str(corpus["train"]), "val_files": str(corpus["val"]), "vocab_size": 300,
            "block_size": 32, "cache_dir": str(cache)}
    return TextDataModule(**{**args, **kw})


def test_ids_take_the_smallest_unsigned_type():
    assert id_dtype(300) == np.uint16 and id_dtype(65536) == np.uint16
    assert id_dtype(65537) == np.uint32 and id_dtype(2**32) == np.uint32
    with pytest.raises(ValueError):
        id_dtype(2**32 + 1)


def test_ranges_end_at_line_breaks_and_cover_the_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes("ligne é\n".encode() * 500 + b"no newline at the end")
    ranges = line_ranges(path, chunk_bytes=100)
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size and len(ranges) > 10
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    data = path.read_bytes()
    assert all(data[end - 1 : end] == b"\n" for _, end in ranges[:-1])


def test_many_processes_and_shards_give_the_ids_of_one_pass(text_corpus, tmp_path, monkeypatch, caplog):
    one = text_module(text_corpus, tmp_path / "one", tokenize_processes=1)
    one.prepare_data()
    tokenizer = one.tokenizer = load_tokenizer(
        one._tokenizer_file())
    monkeypatch.setattr(shards, "CHUNK_BYTES", 2000)  # many shards from a small file
    many = text_module(text_corpus, tmp_path / "many", tokenize_processes=2, tokenizer_path=str(one._tokenizer_file()))
    with caplog.at_level(logging.INFO):
        ids_many = many._token_ids("train", tokenizer)
    assert "tokens/s" in caplog.text and "MB/s" in caplog.text
    ids_one = one._token_ids("train", tokenizer)
    assert len(ids_many.ids.arrays) > 5 and len(ids_one.ids.arrays) == 1
    assert ids_many.ids.arrays[0].dtype == np.uint16 and isinstance(ids_many.ids.arrays[0], np.memmap)
    assert np.array_equal(ids_many.ids.all(), ids_one.ids.all())
    assert np.array_equal(ids_many.lengths.all(), ids_one.lengths.all())
    # and what one encode_batch over the lines gives
    lines = [line for line in text_corpus["train"].read_text(encoding="utf-8").splitlines() if line.strip()]
    expected = [i for e in tokenizer.encode_batch(lines, add_special_tokens=False) for i in e.ids]
    assert ids_one.ids.all().tolist() == expected
    assert Concatenated(ids_many.ids.arrays).span(10, 3000).tolist() == expected[10:3000]


def failing_after_first(job, tmp, tokenizer, options):
    if job.name != "00000":
        raise RuntimeError("interrupted")
    return encode_lines(job, tmp, tokenizer, options)


@pytest.mark.parametrize("processes", [1, 2])
def test_an_interrupted_tokenization_leaves_nothing_a_later_run_trusts(text_corpus, tmp_path, monkeypatch, processes):
    dm = text_module(text_corpus, tmp_path / "cache", tokenize_processes=processes)
    dm.prepare_data()
    tokenizer = load_tokenizer(dm._tokenizer_file())
    folder = tmp_path / "shards" / "key"
    jobs = jobs_for([text_corpus["train"]], chunk_bytes=2000)
    with pytest.raises(RuntimeError, match="interrupted"):
        shards.build(folder, jobs, failing_after_first, tokenizer, {"dtype": "<u2"}, "train", processes)
    assert not folder.exists() and not list(folder.parent.iterdir())  # no folder, no temporary leftovers
    # a build killed outright leaves its temporary folder; the next build removes it and starts over
    dead = folder.with_name(f".{folder.name}.tmp-{2**22 + 12345}")
    dead.mkdir()
    (dead / "00000.ids").write_bytes(b"\0\0")
    manifest = shards.build(folder, jobs, encode_lines, tokenizer, {"dtype": "<u2"}, "train", processes)
    assert not dead.exists() and (folder / "manifest.json").is_file()
    assert len(manifest["shards"]) == len(jobs) and sum(s["tokens"] for s in manifest["shards"]) > 0
    (folder / "00001.ids").write_bytes(b"\0\0")  # a damaged shard is refused, not read
    with pytest.raises(OSError, match="delete"):
        shards.load_array(folder, manifest["shards"][1], "ids", np.uint16, manifest["shards"][1]["tokens"])


def test_an_edited_file_is_tokenized_again(text_corpus, tmp_path):
    train = tmp_path / "train.txt"
    train.write_text(text_corpus["train"].read_text(encoding="utf-8"), encoding="utf-8")
    corpus = {"train": train, "val": text_corpus["val"]}
    dm = text_module(corpus, tmp_path / "cache")
    dm.prepare_data()
    tokenizer = load_tokenizer(dm._tokenizer_file())
    before = dm._token_ids("train", tokenizer).ids.all()
    with open(train, "a", encoding="utf-8") as f:
        f.write("An appended line of text.\n")
    os.utime(train, ns=(train.stat().st_atime_ns, train.stat().st_mtime_ns + 10**9))
    edited = text_module(corpus, tmp_path / "cache", tokenizer_path=str(dm._tokenizer_file()))
    after = edited._token_ids("train", tokenizer).ids.all()
    assert len(after) > len(before) and np.array_equal(after[: len(before)], before)
    assert len(list((tmp_path / "cache" / "tokens").glob("*/manifest.json"))) == 3  # train, val, edited train


def test_pairs_are_sharded_too(tsv_corpus, tmp_path, monkeypatch):
    args = {"train_file": str(tsv_corpus["train"]), "val_file": str(tsv_corpus["val"]), "vocab_size": 300,
            "max_len": 32, "max_tokens": 256, "eval_max_tokens": 256}
    one = ParallelDataModule(**args, cache_dir=str(tmp_path / "one"), tokenize_processes=1)
    one.setup("fit")
    one.tokenizer.save(str(tmp_path / "tok.json"))
    monkeypatch.setattr(shards, "CHUNK_BYTES", 500)
    many = ParallelDataModule(**args, cache_dir=str(tmp_path / "many"), tokenize_processes=2,
                              tokenizer_path=str(tmp_path / "tok.json"))
    many.prepare_data()
    many.setup("fit")
    folder, manifest = many._token_ids("train", many.tokenizer)
    assert len(manifest["shards"]) > 5 and manifest["options"]["dtype"] == "<u2"
    assert sum(s["skipped"].get("no tab", 0) for s in manifest["shards"]) == 2
    ours, theirs = many.datasets["train"], one.datasets["train"]
    assert [ours[i] for i in range(len(ours))] == [theirs[i] for i in range(len(theirs))]
    assert ours.src_lengths == theirs.src_lengths
