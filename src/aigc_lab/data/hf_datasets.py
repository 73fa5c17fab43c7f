"""Hugging Face ``datasets`` as corpora of the masked LM's data module (optional: ``pip install -e ".[hf]"``).

A corpus entry ``hf:<path>`` (in ``data.train_files`` and the others) names

- a folder written by ``Dataset.save_to_disk`` (one split: for a ``DatasetDict``, name its split's folder,
  ``hf:<path>/train``), read with ``datasets.load_from_disk``;
- a local ``.jsonl``/``.json``, ``.csv`` or ``.parquet`` file, read with ``datasets.load_dataset``.

Its ``data.text_column`` is written once, one row a line (a row's own line breaks become spaces), into a UTF-8
text file in the cache, keyed by the dataset's files (path, size, modification time) and the column: the rest of
the pipeline (size checks, tokenizer training, token caches) reads that file as any other. An edited dataset gets
a new key; the file is written under a temporary name and renamed, so an interrupted write leaves none.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aigc_lab.data.tokenizer import atomic_write, cache_key, file_fingerprint
from aigc_lab.errors import ConfigError, DataNotFoundError, UserError

log = logging.getLogger(__name__)

PREFIX = "hf:"
TEXT_FORMAT = 1  # part of the cache key: bump when the written text changes meaning
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def is_dataset(entry: object) -> bool:
    return isinstance(entry, str) and entry.startswith(PREFIX)


def text_file(entry: str, column: str, cache_dir: Path, key: str) -> Path:
    """The cached text file of the dataset ``entry`` (``hf:<path>``) of the option ``data.<key>``, written first
    when missing."""
    source = Path(entry.removeprefix(PREFIX)).expanduser()
    if not source.exists():
        raise DataNotFoundError(f"dataset not found: {source} (data.{key}): give a folder written by "
                                f"Dataset.save_to_disk or a .jsonl/.csv/.parquet file")
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    out = Path(cache_dir) / "hf_text" / f"{cache_key(file_fingerprint(files), column, TEXT_FORMAT)}.txt"
    if out.is_file():
        return out
    dataset = _load(source, cache_dir, key)
    if column not in dataset.column_names:
        raise ConfigError(f"data.text_column={column!r} is not a column of {source} (data.{key}): its columns "
                          f"are {', '.join(dataset.column_names)}")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for batch in dataset.iter(batch_size=1000):  # a batch of rows at a time, whatever the dataset's size
                f.writelines(" ".join(str(text).split("\n")) + "\n" for text in batch[column])

    atomic_write(out, write)
    log.info("Wrote the %r column of %s (%d rows) to %s", column, source, len(dataset), out)
    return out


def _load(source: Path, cache_dir: Path, key: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError(f"data.{key} names a Hugging Face dataset, which needs the datasets package: "
                        f"pip install -e \".[hf]\"") from None
    if source.is_dir():
        loaded = datasets.load_from_disk(str(source))
        if isinstance(loaded, datasets.DatasetDict):
            raise ConfigError(f"{source} (data.{key}) holds the splits {', '.join(loaded)}: name one, e.g. "
                              f"hf:{source / next(iter(loaded))}")
        return loaded
    builder = BUILDERS.get(source.suffix)
    if builder is None:
        raise ConfigError(f"{source} (data.{key}): a dataset file must end in {', '.join(BUILDERS)}")
    return datasets.load_dataset(builder, data_files=str(source), split="train",
                                 cache_dir=str(Path(cache_dir) / "hf_datasets"))
