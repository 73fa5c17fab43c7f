"""Hugging Face ``datasets`` as corpora of the masked LM (``data.train_files=hf:<path>``) and as pairs of the seq2seq
model (``data.train_file=hf:<path>``), written offline here: a folder saved with ``save_to_disk`` and a ``.jsonl``
file read by ``load_dataset``."""

from __future__ import annotations

import json

import pytest
import torch

from aigc_lab.data.parallel import ParallelDataModule
from aigc_lab.data.text import TextDataModule
from aigc_lab.errors import ConfigError

datasets = pytest.importorskip("datasets", reason="the datasets package is not installed (pip install -e '.[hf]')")
pytestmark = pytest.mark.usefixtures("single_thread")


def rows(corpus, split: str) -> list[str]:
    return [line for line in corpus[split].read_text(encoding="utf-8").splitlines() if line.strip()]


def saved(tmp_path, corpus, split: str):
    folder = tmp_path / f"{split}_ds"
    texts = rows(corpus, split)
    datasets.Dataset.from_dict({"id": list(range(len(texts))), "body": texts}).save_to_disk(str(folder))
    return folder


def module(tmp_path, **files) -> TextDataModule:
    return TextDataModule(**files, vocab_size=300, block_size=32, batch_size=8, eval_batch_size=16,
                          cache_dir=str(tmp_path / "cache"), text_column="body")


def test_a_saved_dataset_and_a_jsonl_file_train_as_their_text_does(text_corpus, tmp_path):
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t, "n": 1}) + "\n" for t in rows(text_corpus, "val")))
    dm = module(tmp_path, train_files=f"hf:{saved(tmp_path, text_corpus, 'train')}", val_files=f"hf:{jsonl}",
                test_files=f"hf:{saved(tmp_path, text_corpus, 'test')}")
    for split in ("train", "val", "test"):  # each column became a cached text file, one row a line
        (path,) = dm.files[split]
        assert path.parent == tmp_path / "cache" / "hf_text"
        assert path.read_text(encoding="utf-8").splitlines() == rows(text_corpus, split)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 32) and batch["input_ids"].dtype == torch.int64

    dm.tokenizer.save(str(tmp_path / "tokenizer.json"))  # tokenizer training is not reproducible across runs
    plain = TextDataModule(train_files=str(text_corpus["train"]), val_files=str(text_corpus["val"]), block_size=32,
                           cache_dir=str(tmp_path / "cache"), tokenizer_path=str(tmp_path / "tokenizer.json"))
    plain.setup("fit")
    assert torch.equal(all_blocks(plain), all_blocks(dm))  # the same text, the same blocks


def all_blocks(dm: TextDataModule) -> torch.Tensor:
    dataset = dm.datasets["train"]
    return dataset.__getitems__(list(range(len(dataset))))[1]


def test_datasets_of_pairs_train_as_their_tsv_does(tsv_corpus, tmp_path):
    """Source and target columns: the same pairs, token ids and raw strings as the TSV files they came from."""
    entries = {}
    for split in ("train", "val"):
        lines = tsv_corpus[split].read_text(encoding="utf-8").splitlines()
        pairs = [fields for fields in (line.split("\t") for line in lines) if len(fields) == 2]
        table = {"en": [s for s, _ in pairs], "fr": [t for _, t in pairs], "n": list(range(len(pairs)))}
        if split == "train":
            datasets.Dataset.from_dict(table).save_to_disk(str(tmp_path / "train_ds"))
            entries[split] = f"hf:{tmp_path / 'train_ds'}"
        else:
            path = tmp_path / "val.jsonl"
            path.write_text("".join(json.dumps(dict(zip(table, row))) + "\n" for row in zip(*table.values())))
            entries[split] = f"hf:{path}"
    common = {"vocab_size": 300, "max_len": 32, "max_tokens": 256, "eval_max_tokens": 256,
              "cache_dir": str(tmp_path / "cache"), "tokenize_processes": 2}
    dm = ParallelDataModule(train_file=entries["train"], val_file=entries["val"], source_column="en",
                            target_column="fr", **common)
    assert dm.files["train"].parent == tmp_path / "cache" / "hf_pairs"
    dm.prepare_data()
    dm.setup("fit")
    dm.tokenizer.save(str(tmp_path / "tokenizer.json"))  # tokenizer training is not reproducible across runs
    plain = ParallelDataModule(train_file=str(tsv_corpus["train"]), val_file=str(tsv_corpus["val"]),
                               tokenizer_path=str(tmp_path / "tokenizer.json"), **common)
    plain.setup("fit")
    for split in ("train", "val"):
        ours, theirs = dm.datasets[split], plain.datasets[split]
        assert len(ours) == len(theirs) > 0
        assert [ours[i] for i in range(len(ours))] == [theirs[i] for i in range(len(theirs))]
    with pytest.raises(ConfigError, match="data.target_column='target' is not a column of .* its columns are en, fr"):
        ParallelDataModule(train_file=entries["train"], val_file=entries["val"], source_column="en",
                           **{**common, "cache_dir": str(tmp_path / "other")})


def test_an_edited_dataset_is_never_served_stale(text_corpus, tmp_path):
    folder = saved(tmp_path, text_corpus, "train")
    first = module(tmp_path, train_files=f"hf:{folder}", val_files=str(text_corpus["val"])).files["train"][0]
    datasets.Dataset.from_dict({"id": [0], "body": ["A different corpus altogether. " * 40]}).save_to_disk(
        str(tmp_path / "other"))
    for old in folder.iterdir():  # the dataset rewritten in place
        old.unlink()
    for new in (tmp_path / "other").iterdir():
        new.rename(folder / new.name)
    second = module(tmp_path, train_files=f"hf:{folder}", val_files=str(text_corpus["val"])).files["train"][0]
    assert second != first and "A different corpus" in second.read_text(encoding="utf-8")


def test_dataset_mistakes_name_the_fix(text_corpus, tmp_path):
    folder = saved(tmp_path, text_corpus, "train")
    val = str(text_corpus["val"])
    with pytest.raises(ConfigError, match="data.text_column='text' is not a column of .* its columns are id, body"):
        TextDataModule(train_files=f"hf:{folder}", val_files=val, cache_dir=str(tmp_path / "cache"))
    splits = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.load_from_disk(str(folder))}).save_to_disk(str(splits))
    with pytest.raises(ConfigError, match=f"holds the splits train: name one, e.g. hf:{splits / 'train'}"):
        module(tmp_path, train_files=f"hf:{splits}", val_files=val)
    module(tmp_path, train_files=f"hf:{splits / 'train'}", val_files=val)  # which works
