"""Local UTF-8 text files for masked language modelling.

The tokenizer is trained on the training split (or loaded from ``tokenizer_path``) and cached; each
split is tokenized once, in a streaming pass over its files in parallel processes, into memory-mapped shards of
token ids (data/shards.py: uint16 for vocabularies under 65,536), keyed by a hash of the files and the
tokenizer; training reads the shards, so memory does not grow with the corpus. Sequences are either packed into
fixed blocks of ``block_size`` tokens, ``[CLS] ... [SEP]`` (``line_by_line: false``, no padding), or one per
non-empty line, truncated to ``block_size`` and padded per batch (``line_by_line: true``).
Masking happens in the collator.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from aigc_lab.data.hf_datasets import is_dataset, text_file
from aigc_lab.data.masking import MaskingCollator
from aigc_lab.data.prepared import prepare_once
from aigc_lab.data.shards import (
    ENCODE_BATCH,
    SHARDS_FORMAT,
    Concatenated,
    Job,
    build,
    decode,
    id_dtype,
    jobs_for,
    load_array,
)
from aigc_lab.data.tokenizer import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    TokenizedData,
    cache_key,
    check_tokenizer_options,
    file_fingerprint,
    load_or_train_tokenizer,
    load_tokenizer,
    read_text,
    text_chunks,
)
from aigc_lab.errors import CorpusError, DataNotFoundError
from aigc_lab.utils.validate import in_interval, positive, require

log = logging.getLogger(__name__)

IDS_FORMAT = 2  # part of the token-cache key


def resolve_files(spec: str | Sequence[str], key: str) -> list[Path]:
    """Paths and globs -> existing files, in order (each glob sorted); a miss names the path and the fix."""
    entries = [spec] if isinstance(spec, str) else list(spec)
    if not entries:
        raise DataNotFoundError(f"data.{key} is empty: give one or more text files (paths or globs)")
    files: list[Path] = []
    for entry in entries:
        pattern = os.path.expanduser(str(entry))
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for match in matches or [pattern]:
            path = Path(match)
            if not path.is_file():
                raise DataNotFoundError(
                    f"text file not found: {path} (data.{key}). Fix: set AIGC_DATA_DIR to the folder that holds "
                    f"text/python-docs/, or point data.{key} at your own UTF-8 text files (paths or globs)"
                )
            files.append(path)
    return files


def check_block_fits_files(block_size: int, files: Sequence[Path], split: str) -> None:
    """Raise CorpusError when the files of a split cannot fill one packed block, before any tokenizing: a token
    is at least one byte of text, so they hold at most as many tokens as bytes."""
    size = sum(path.stat().st_size for path in files)
    if size < block_size - 2:
        if not any(read_text(path).strip() for path in files):  # small files: cheap to read
            raise CorpusError(f"empty corpus: no text in {_names(files)} (data.{split}_files): "
                              f"point data.{split}_files at non-empty UTF-8 text files")
        raise CorpusError(
            f"data.block_size={block_size} needs {block_size - 2} tokens per block ([CLS] and [SEP] aside), but "
            f"{_names(files)} (data.{split}_files) hold{'s' if len(files) == 1 else ''} {size} bytes, at most "
            f"{size} tokens: use data.block_size <= {size + 2}, more text, or data.line_by_line=true"
        )


def encode_lines(job: Job, tmp: Path, tokenizer: Tokenizer, options: dict[str, Any]) -> dict[str, int]:
    """One shard of a text corpus (data/shards.py): the ids of its non-blank lines, no special tokens (a line that
    encodes to nothing is dropped), flat in ``<name>.ids`` (``options["dtype"]``), one uint32 length per line in
    ``<name>.lengths``."""
    text, _ = decode(job.read())
    lines = [line for line in text.splitlines() if line.strip()]
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets
    lengths: list[int] = []
    with open(tmp / f"{job.name}.ids", "wb") as out:
        for i in range(0, len(lines), ENCODE_BATCH):
            ids = [e.ids for e in encode(lines[i : i + ENCODE_BATCH], add_special_tokens=False)]
            ids = [row for row in ids if row]
            sizes = [len(row) for row in ids]
            np.fromiter(chain.from_iterable(ids), dtype=options["dtype"], count=sum(sizes)).tofile(out)
            lengths += sizes
    np.asarray(lengths, dtype=np.uint32).tofile(tmp / f"{job.name}.lengths")
    return {"tokens": sum(lengths), "lines": len(lengths)}


class TokenIds:
    """A split's token ids, memory-mapped from its shards: ``ids`` all lines' ids in order, ``lengths`` per line."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        dtype = np.dtype(manifest["options"]["dtype"])
        shards = manifest["shards"]
        self.ids = Concatenated([load_array(folder, s, "ids", dtype, s["tokens"]) for s in shards])
        self.lengths = Concatenated([load_array(folder, s, "lengths", np.uint32, s["lines"]) for s in shards])


class PackedBlocks(Dataset):
    """Fixed-length blocks of ``[CLS] chunk [SEP]``: the token stream cut into chunks of ``block_size - 2`` (the
    remainder dropped), read from the memory-mapped ids when a batch asks for them."""

    def __init__(self, ids: Concatenated, block_size: int, cls_id: int, sep_id: int) -> None:
        self.ids, self.body, self.cls_id, self.sep_id = ids, block_size - 2, cls_id, sep_id

    def __len__(self) -> int:
        return len(self.ids) // self.body

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        body = np.stack([self.ids.span(i * self.body, (i + 1) * self.body) for i in indices])  # [B, T - 2]
        body = torch.from_numpy(body.astype(np.int64))
        n = len(indices)
        blocks = torch.cat([torch.full((n, 1), self.cls_id), body, torch.full((n, 1), self.sep_id)], dim=1)
        return torch.as_tensor(indices), blocks  # sample indices [B] (for evaluation masking), ids [B, T]


class Lines(Dataset):
    """One ``[CLS] line [SEP]`` sequence per non-empty line, truncated to ``block_size`` tokens."""

    def __init__(self, ids: Concatenated, lengths: np.ndarray, block_size: int, cls_id: int, sep_id: int) -> None:
        self.ids, self.lengths = ids, lengths.astype(np.int64)
        self.starts = np.cumsum(self.lengths) - self.lengths  # [N] offset of each line in ids
        self.body, self.cls_id, self.sep_id = block_size - 2, cls_id, sep_id

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rows = []
        for i in indices:
            start, length = int(self.starts[i]), min(int(self.lengths[i]), self.body)
            body = torch.from_numpy(self.ids.span(start, start + length).astype(np.int64))
            rows.append(torch.cat([body.new_tensor([self.cls_id]), body, body.new_tensor([self.sep_id])]))
        return torch.as_tensor(indices), rows


class TextDataModule(TokenizedData, L.LightningDataModule):
    """Train/val/test text files -> masked-LM batches {"input_ids", "labels"[, "attention_mask"]}."""

    data_option = "text"  # the conf/data option it is; train.check_pairing compares the two

    def __init__(
        self,
        train_files: str | list[str],
        val_files: str | list[str],
        test_files: str | list[str] | None = None,
        # the options of both token data modules (data/tokenizer.py checks the tokenizer's alike)
        tokenizer_path: str | None = None, vocab_size: int = 8192, min_frequency: int = 2, lowercase: bool = False,
        num_workers: int = 0, cache_dir: str = ".cache", tokenize_processes: int | None = None,
        # sequences and masking
        block_size: int = 128, line_by_line: bool = False, mask_rate: float = 0.15, eval_mask_seed: int = 0,
        batch_size: int = 32, eval_batch_size: int = 64,
        text_column: str = "text",
    ) -> None:
        """Files are UTF-8 text files (paths or globs) or Hugging Face datasets (``hf:<path>``: a folder written by
        ``save_to_disk`` or a .jsonl/.csv/.parquet file) whose ``text_column`` is the text (data/hf_datasets.py).
        ``test_files: null`` tests on the validation files. ``eval_mask_seed`` fixes the masks of
        validation and test sequences, so their losses compare across epochs and runs."""
        super().__init__()
        in_interval("data.mask_rate", mask_rate, 0, 1, "()")
        require(block_size >= 3, "data.block_size", block_size, ">= 3 ([CLS], a token, [SEP])")
        check_tokenizer_options(vocab_size, min_frequency, num_workers, SPECIAL_TOKENS)
        positive("data.batch_size", batch_size)
        positive("data.eval_batch_size", eval_batch_size)
        self.save_hyperparameters()
        self.cache_dir = Path(cache_dir).expanduser()
        # Resolved now, so that a missing file stops the run before anything heavy starts (a Hugging Face dataset,
        # hf:<path>, is its text column written to a cached text file: data/hf_datasets.py).
        self.files = {
            "train": self._resolve(train_files, "train_files"),
            "val": self._resolve(val_files, "val_files"),
            "test": self._resolve(test_files, "test_files") if test_files is not None else None,
        }
        if not line_by_line:
            for split, files in self.files.items():
                if files is not None:
                    check_block_fits_files(block_size, files, split)
        self.tokenizer: Tokenizer | None = None
        self.datasets: dict[str, Dataset] = {}

    def _resolve(self, spec: str | Sequence[str], key: str) -> list[Path]:
        entries = [spec] if isinstance(spec, str) else list(spec)
        column = self.hparams.text_column
        return resolve_files([str(text_file(e, column, self.cache_dir, key)) if is_dataset(e) else e
                              for e in entries], key)

    # ---------------------------------------------------------------- preparing (cached)
    @prepare_once
    def prepare_data(self) -> None:
        """Train (or find) the tokenizer and tokenize every split into the cache: one process per node."""
        tokenizer = load_tokenizer(self._tokenizer_file())
        for split in ("train", "val", "test"):
            if self.files[split] is not None:
                self._token_ids(split, tokenizer)

    def _tokenizer_file(self) -> Path:
        if self.hparams.tokenizer_path:
            return Path(self.hparams.tokenizer_path).expanduser()

        def corpus() -> Iterator[str]:  # streamed: a piece of the files at a time
            self._require_text("train")
            return text_chunks(self.files["train"])

        return load_or_train_tokenizer(
            self.files["train"], corpus, self.cache_dir,
            self.hparams.vocab_size, self.hparams.min_frequency, self.hparams.lowercase,
        )

    def _require_text(self, split: str) -> None:
        """CorpusError unless the split's files hold some non-blank text (read until the first is found)."""
        if not any(chunk.strip() for chunk in text_chunks(self.files[split])):
            raise CorpusError(f"empty corpus: no text in {_names(self.files[split])} (data.{split}_files): "
                              f"point data.{split}_files at non-empty UTF-8 text files")

    def _token_ids(self, split: str, tokenizer: Tokenizer) -> TokenIds:
        """The split's ids in memory-mapped shards (all non-empty lines, no special tokens), tokenized on a miss."""
        files = self.files[split]
        tok_hash = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()
        folder = self.cache_dir / "tokens" / cache_key(file_fingerprint(files), tok_hash, IDS_FORMAT, SHARDS_FORMAT)
        dtype = id_dtype(tokenizer.get_vocab_size())
        if not folder.is_dir():
            self._require_text(split)
        manifest = build(folder, jobs_for(files), encode_lines, tokenizer, {"dtype": dtype.str},
                         what=f"{split} ({_names(files)})", processes=self.hparams.tokenize_processes)
        if not sum(s["tokens"] for s in manifest["shards"]):
            raise CorpusError(f"empty corpus: no tokens in {_names(files)} (data.{split}_files): "
                              f"point data.{split}_files at text the tokenizer can read")
        return TokenIds(folder, manifest)

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self._tokenizer_file())
            if self.trainer is not None and self.trainer.is_global_zero:  # saved with the run
                run_dir = Path(self.trainer.default_root_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                self.tokenizer.save(str(run_dir / "tokenizer.json"))
        if not self.datasets:
            for split in ("train", "val", "test"):
                if self.files[split] is not None:
                    self.datasets[split] = self._dataset(split)
            self.datasets.setdefault("test", self.datasets["val"])

    def _dataset(self, split: str) -> Dataset:
        tokens = self._token_ids(split, self.tokenizer)
        block, cls_id, sep_id = self.hparams.block_size, self.special_id(CLS), self.special_id(SEP)
        if self.hparams.line_by_line:
            return Lines(tokens.ids, tokens.lengths.all(), block, cls_id, sep_id)
        if len(tokens.ids) < block - 2:
            raise CorpusError(
                f"the {split} corpus {_names(self.files[split])} has {len(tokens.ids)} tokens, fewer than one "
                f"block of {block} ({block - 2} + [CLS] and [SEP]): add text, or lower data.block_size"
            )
        return PackedBlocks(tokens.ids, block, cls_id, sep_id)

    # ---------------------------------------------------------------- loaders
    def collator(self, seed: int | None) -> MaskingCollator:
        return MaskingCollator(
            self.vocab_size, self.special_id(MASK), self.special_id(PAD),
            [self.special_id(t) for t in SPECIAL_TOKENS], self.hparams.mask_rate, seed,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size)

    def _loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        workers = self.hparams.num_workers
        if workers > 0:
            # Workers never tokenize; saying so keeps `tokenizers` from warning in every forked worker.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(self.datasets[split]) >= batch_size,  # equal batch shapes in training
            num_workers=workers,
            collate_fn=self.collator(seed=None if shuffle else self.hparams.eval_mask_seed),
            persistent_workers=workers > 0,
        )


def _names(files: Sequence[Path]) -> str:
    return ", ".join(str(f) for f in files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")
