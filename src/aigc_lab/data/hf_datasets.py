"""Hugging Face ``datasets`` as corpora of the text and parallel data modules (optional: ``pip install -e ".[hf]"``).

A corpus entry ``hf:<path>`` (in ``data.train_files`` and the others) names

- a folder written by ``Dataset.save_to_disk`` (one split: for a ``DatasetDict``, name its split's folder,
  ``hf:<path>/train``), read with ``datasets.load_from_disk``;
- a local ``.jsonl``/``.json``, ``.csv`` or ``.parquet`` file, read with ``datasets.load_dataset``.

Its ``data.text_column`` (text) or ``data.source_column`` and ``data.target_column`` (pairs) are written once, one
row a line (a row's own line breaks become spaces), into a UTF-8 text or TSV file in the cache, keyed by the
dataset's files (path, size, modification time) and the columns: the rest of the pipeline (size checks, tokenizer
training, token shards) reads that file as any other. An edited dataset gets
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
    """The cached text file of the dataset ``entry`` (``hf:<path>``) of the option ``data.<key>``: its ``column``,
    one row a line, written first when missing."""
    return _materialized(entry, {"text_column": column}, cache_dir, key, "hf_text", ".txt")


def tsv_file(entry: str, source_column: str, target_column: str, cache_dir: Path, key: str) -> Path:
    """The cached ``source<TAB>target`` file of the dataset ``entry`` (``hf:<path>``) of ``data.<key>``: a row's
    two columns a line (tabs and line breaks inside a side become spaces), written first when missing."""
    columns = {"source_column": source_column, "target_column": target_column}
    return _materialized(entry, columns, cache_dir, key, "hf_pairs", ".tsv")


def _materialized(entry: str, options: dict[str, str], cache_dir: Path, key: str, folder: str, suffix: str) -> Path:
    """``options``: data option -> the column it names, in the order the columns are written."""
    source = Path(entry.removeprefix(PREFIX)).expanduser()
    if not source.exists():
        raise DataNotFoundError(f"dataset not found: {source} (data.{key}): give a folder written by "
                                f"Dataset.save_to_disk or a .jsonl/.csv/.parquet file")
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    columns = list(options.values())
    parts = [file_fingerprint(files), columns[0] if len(columns) == 1 else columns, TEXT_FORMAT]
    out = Path(cache_dir) / folder / f"{cache_key(*parts)}{suffix}"
    if out.is_file():
        return out
    dataset = _load(source, cache_dir, key)
    for option, column in options.items():
        if column not in dataset.column_names:
            raise ConfigError(f"data.{option}={column!r} is not a column of {source} (data.{key}): its columns are "
                              f"{', '.join(dataset.column_names)}")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for batch in dataset.iter(batch_size=1000):  # a batch of rows at a time, whatever the dataset's size
                rows = zip(*(batch[c] for c in columns))
                f.writelines("\t".join(" ".join(str(v).replace("\t", " ").split("\n")) for v in row) + "\n"
                             for row in rows)

    atomic_write(out, write)
    log.info("Wrote the %s column(s) of %s (%d rows) to %s", ", ".join(map(repr, columns)), source, len(dataset), out)
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
