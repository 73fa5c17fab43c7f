"""Parallel text for the seq2seq model: ``source<TAB>target`` TSV files, or a built-in synthetic task.

TSV files: one pair per line, split at the tab. Lines without a tab, with more than one, with an empty
side, or with a side longer than ``max_len`` tokens (its [BOS]/[EOS] included) are skipped and counted
in one warning per file; a file with no usable line is an error that names it, and so is a train file
that fits in one training batch (``max_tokens``), where every step would repeat the same pairs. A first
line that looks like column names (``source<TAB>target``, ``en<TAB>fr``) is trained on as a pair, with a
warning. A joint byte-level BPE tokenizer is trained on both sides of the training pairs (streamed) and cached
like the masked LM's (keyed by the file and the settings), or loaded from ``tokenizer_path``. Each file is
tokenized once, in a streaming pass in parallel processes, into memory-mapped shards (data/shards.py): both
sides' ids (uint16 under 65,536 tokens), their lengths and the pairs' text (for BLEU), keyed by the file and the
tokenizer. A file may also be a Hugging Face dataset, ``hf:<path>``, read through ``data.source_column`` and
``data.target_column`` (data/hf_datasets.py).

The synthetic task (``task: synthetic``) needs no files: random strings of space-separated symbols and
the same strings reversed, a fixed function of ``synthetic_seed`` and the split, with a symbol-level
tokenizer ("3 a 7" -> "7 a 3").

Batches are cut by a token budget (``TokenBudgetBatchSampler``): padded source + padded target tokens
<= ``max_tokens``, pairs of similar lengths together. A batch is a dict:
src [B, S] (ids + [EOS]), src_mask [B, S] (True = token), tgt_in [B, T] ([BOS] + ids), tgt_out [B, T]
(ids + [EOS]), padded with [PAD]; and the raw strings ``source`` and ``reference`` (B each), for BLEU
on detokenized text.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, Sampler

from aigc_lab.data import shards
from aigc_lab.data.hf_datasets import is_dataset, tsv_file
from aigc_lab.data.prepared import prepare_once
from aigc_lab.data.tokenizer import (
    BOS,
    EOS,
    PAD,
    SEQ2SEQ_SPECIAL_TOKENS,
    TokenizedData,
    cache_key,
    check_tokenizer_options,
    file_fingerprint,
    load_or_train_tokenizer,
    load_tokenizer,
    symbol_tokenizer,
    text_chunks,
)
from aigc_lab.errors import ConfigError, CorpusError, DataNotFoundError
from aigc_lab.utils.validate import in_interval, positive, require

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PAIRS_FORMAT = 1  # part of the pair shards' cache key
SYMBOLS = "0123456789abcdefghijklmnopqrstuvwxyz"  # the synthetic task's alphabet (its first synthetic_symbols)
Pair = tuple[str, str]  # (source, target)
Batch = dict[str, Any]  # tensors and lists of strings: see the module docstring
# Words of a header line ("source<TAB>target", "en<TAB>fr", "English<TAB>French", "src_text<TAB>tgt_text"):
# column names, and language codes and names.
HEADER_WORDS = frozenset({
    "source", "target", "src", "tgt", "trg", "input", "output", "in", "out", "text", "sentence", "sent",
    "translation", "original", "reference", "ref", "hypothesis", "hyp", "lang", "language", "col", "column", "left",
    "right", "en", "fr", "de", "es", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar", "hi", "tr", "pl", "sv", "da",
    "fi", "nb", "nn", "cs", "el", "he", "hu", "ro", "uk", "vi", "th", "id", "ms", "fa", "bg", "hr", "sr", "sk", "sl",
    "et", "lv", "lt", "ca", "eu", "gl", "ga", "cy", "sw", "bn", "ta", "ur", "eng", "fra", "fre", "deu", "ger", "spa",
    "ita", "por", "nld", "dut", "rus", "zho", "chi", "jpn", "kor", "ara", "english", "french", "german", "spanish",
    "italian", "portuguese", "dutch", "russian", "chinese", "japanese", "korean", "arabic", "hindi", "turkish",
    "polish", "swedish", "danish", "finnish", "norwegian", "czech", "greek", "hebrew", "hungarian", "romanian",
    "ukrainian", "vietnamese", "thai", "indonesian", "persian",
})


# -------------------------------------------------------------------- reading
def parse_pairs(text: str) -> tuple[list[Pair], Counter, int]:
    """(pairs, skipped lines per reason, number of lines) of ``source<TAB>target`` lines; sides are stripped."""
    pairs: list[Pair] = []
    skipped: Counter = Counter()
    lines = text.splitlines()
    for line in lines:
        fields = line.split("\t")
        if len(fields) == 1:
            skipped["no tab" if line.strip() else "blank"] += 1
        elif len(fields) > 2:
            skipped["more than one tab"] += 1
        elif not fields[0].strip() or not fields[1].strip():
            skipped["empty side"] += 1
        else:
            pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs, skipped, len(lines)


def encode_pairs(job: shards.Job, tmp: Path, tokenizer: Tokenizer, options: dict[str, Any]) -> dict[str, Any]:
    """One shard of a TSV file (data/shards.py): of each well-formed pair, the ids of both sides without special
    tokens (``<name>.src``, ``<name>.tgt``, flat, ``options["dtype"]``), their lengths (``.src_len``, ``.tgt_len``,
    uint32) and its text, ``source<TAB>target`` in UTF-8 (``.text``, with ``.text_end``: uint64 end offsets)."""
    pairs, skipped, n_lines = parse_pairs(shards.decode(job.read())[0])
    lengths: dict[str, list[int]] = {"src": [], "tgt": []}
    with open(tmp / f"{job.name}.src", "wb") as src_out, open(tmp / f"{job.name}.tgt", "wb") as tgt_out:
        for i in range(0, len(pairs), shards.ENCODE_BATCH):
            batch = pairs[i : i + shards.ENCODE_BATCH]
            for side, out, texts in (("src", src_out, [s for s, _ in batch]), ("tgt", tgt_out, [t for _, t in batch])):
                ids = encode_texts(tokenizer, texts)
                sizes = [len(row) for row in ids]
                np.fromiter(chain.from_iterable(ids), dtype=options["dtype"], count=sum(sizes)).tofile(out)
                lengths[side] += sizes
    for side, values in lengths.items():
        np.asarray(values, dtype=np.uint32).tofile(tmp / f"{job.name}.{side}_len")
    texts = [f"{s}\t{t}".encode() for s, t in pairs]
    (tmp / f"{job.name}.text").write_bytes(b"".join(texts))
    np.cumsum([len(t) for t in texts], dtype=np.uint64).tofile(tmp / f"{job.name}.text_end")
    src_tokens, tgt_tokens = sum(lengths["src"]), sum(lengths["tgt"])
    return {"tokens": src_tokens + tgt_tokens, "src_tokens": src_tokens, "tgt_tokens": tgt_tokens, "pairs": len(pairs),
            "text_bytes": sum(len(t) for t in texts), "lines": n_lines, "skipped": dict(skipped)}


def looks_like_header(pair: Pair) -> bool:
    """True when both sides are single column names or languages (``source``/``target``, ``en``/``fr``)."""
    return all(side and " " not in side and all(w in HEADER_WORDS for w in _words(side)) for side in pair)


def _words(name: str) -> list[str]:
    """The lowercase words of a column name: ``"Src_Text"`` -> ["src", "text"]; a region after a language is
    dropped: ``"en-US"`` -> ["en"]."""
    words = [w for w in re.split(r"[_\-.:#/]+", name.lower()) if w]
    if len(words) == 2 and words[0] in HEADER_WORDS and len(words[1]) == 2:
        return words[:1]  # en_US, fr-CA
    return words or [name]


def synthetic_pairs(n: int, min_len: int, max_len: int, n_symbols: int, seed: str) -> list[Pair]:
    """n reversal pairs: ("3 a 7 7", "7 7 a 3"), lengths uniform in [min_len, max_len], a fixed function of seed."""
    rng = random.Random(seed)  # a str seed is hashed deterministically (not by PYTHONHASHSEED)
    symbols = SYMBOLS[:n_symbols]
    pairs = []
    for _ in range(n):
        seq = [rng.choice(symbols) for _ in range(rng.randint(min_len, max_len))]
        pairs.append((" ".join(seq), " ".join(reversed(seq))))
    return pairs


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # fast: no offsets
    return [e.ids for e in encode(list(texts), add_special_tokens=False)]


def detokenize(tokenizer: Tokenizer, ids: Sequence[Sequence[int]]) -> list[str]:
    """Token ids -> text, special tokens dropped and whitespace collapsed (one line per hypothesis)."""
    return [" ".join(text.split()) for text in tokenizer.decode_batch([list(x) for x in ids], skip_special_tokens=True)]


# -------------------------------------------------------------------- datasets and batches
class PairDataset(Dataset):
    """Token ids and raw strings of each pair; lengths count the [EOS] (source) and [BOS]/[EOS] (target) added."""

    def __init__(self, src_ids: list[list[int]], tgt_ids: list[list[int]], sources: list[str], targets: list[str]):
        self.src_ids, self.tgt_ids, self.sources, self.targets = src_ids, tgt_ids, sources, targets
        self.src_lengths = [len(ids) + 1 for ids in src_ids]  # + [EOS]
        self.tgt_lengths = [len(ids) + 1 for ids in tgt_ids]  # [BOS] + ids, or ids + [EOS]

    def __len__(self) -> int:
        return len(self.src_ids)

    def __getitem__(self, i: int) -> tuple[list[int], list[int], str, str]:
        return self.src_ids[i], self.tgt_ids[i], self.sources[i], self.targets[i]


class ShardedPairs(Dataset):
    """The pairs of a TSV file from its memory-mapped shards (``encode_pairs``): all of them, until ``keep`` picks
    some (the pairs that fit ``max_len``); lengths count the [EOS] and [BOS]/[EOS] added, like ``PairDataset``'s."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        dtype = np.dtype(manifest["options"]["dtype"])
        parts = manifest["shards"]

        def arrays(field: str, kind: np.dtype, count: str) -> shards.Concatenated:
            return shards.Concatenated([shards.load_array(folder, s, field, kind, s[count]) for s in parts])

        self.src, self.tgt = arrays("src", dtype, "src_tokens"), arrays("tgt", dtype, "tgt_tokens")
        self.text = arrays("text", np.uint8, "text_bytes")
        src_len, tgt_len = arrays("src_len", np.uint32, "pairs").all(), arrays("tgt_len", np.uint32, "pairs").all()
        # global offsets of every pair's ids and text: [pairs + 1]
        self.src_start = np.concatenate([[0], np.cumsum(src_len, dtype=np.int64)])
        self.tgt_start = np.concatenate([[0], np.cumsum(tgt_len, dtype=np.int64)])
        self.text_start = np.concatenate([[0], *(_global_ends(folder, parts))])
        self.keep(np.arange(len(src_len)))

    def keep(self, indices: np.ndarray) -> None:
        """From now on, the dataset is the pairs at ``indices`` of the file, in that order."""
        self.kept = indices
        self.src_lengths = (np.diff(self.src_start)[indices] + 1).tolist()  # + [EOS]
        self.tgt_lengths = (np.diff(self.tgt_start)[indices] + 1).tolist()  # [BOS] + ids, or ids + [EOS]

    def __len__(self) -> int:
        return len(self.kept)

    def pair_text(self, j: int) -> Pair:
        """(source, target) of pair ``j`` of the file (not of ``keep``)."""
        source, target = self.text.span(int(self.text_start[j]), int(self.text_start[j + 1])).tobytes().decode() \
            .split("\t")
        return source, target

    def __getitem__(self, i: int) -> tuple[list[int], list[int], str, str]:
        j = int(self.kept[i])
        source, target = self.pair_text(j)
        return (self.src.span(int(self.src_start[j]), int(self.src_start[j + 1])).tolist(),
                self.tgt.span(int(self.tgt_start[j]), int(self.tgt_start[j + 1])).tolist(), source, target)


def _global_ends(folder: Path, parts: list[dict[str, Any]]) -> Iterator[np.ndarray]:
    """Each shard's text end offsets, shifted by the shards before it."""
    offset = 0
    for shard in parts:
        yield shards.load_array(folder, shard, "text_end", np.uint64, shard["pairs"]).astype(np.int64) + offset
        offset += shard["text_bytes"]


class PairCollator:
    """Samples -> a padded batch (see the module docstring)."""

    def __init__(self, pad_id: int, bos_id: int, eos_id: int, pad_multiple: int = 1) -> None:
        """``pad_multiple``: pad each batch's lengths up to a multiple of it: far fewer distinct batch shapes, so
        fewer kernels built and cached per shape, and a heap that fragments less (the pads are masked out)."""
        self.pad_id, self.bos_id, self.eos_id, self.pad_multiple = pad_id, bos_id, eos_id, pad_multiple

    def __call__(self, samples: list[tuple[list[int], list[int], str, str]]) -> Batch:
        src, src_mask = self._pad([s + [self.eos_id] for s, _, _, _ in samples])  # [B, S]
        tgt_in, _ = self._pad([[self.bos_id] + t for _, t, _, _ in samples])  # [B, T]
        tgt_out, _ = self._pad([t + [self.eos_id] for _, t, _, _ in samples])  # [B, T]
        return {"src": src, "src_mask": src_mask, "tgt_in": tgt_in, "tgt_out": tgt_out,
                "source": [s for _, _, s, _ in samples], "reference": [r for _, _, _, r in samples]}

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = -(-max(len(r) for r in rows) // self.pad_multiple) * self.pad_multiple  # rounded up
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.bool)  # from the lengths: a literal "[PAD]" in text stays a token
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = True
        return ids, mask


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches of sample indices whose padded size, B x (longest source + longest target), each length rounded up
    to a multiple of ``pad_multiple`` as the collator pads it, stays within ``max_tokens`` (a pair bigger than
    that alone makes a batch).

    Training (``train=True``): shuffle the pairs, sort each chunk of ``sort_chunk`` pairs by length so that
    a batch holds similar lengths (little padding), cut batches, shuffle the batch order; a new order at each
    iteration (epoch), a fixed function of ``seed`` and the epoch. Evaluation: one global length sort (the
    least padding), then a fixed shuffle of the batch order, so that the first few batches (decoded in
    validation) are a fair sample of lengths. With ``num_replicas`` processes (DDP) each rank takes every
    num_replicas-th batch; in training, all ranks get as many batches (the last few are dropped).
    """

    def __init__(
        self,
        src_lengths: Sequence[int],
        tgt_lengths: Sequence[int],
        max_tokens: int,
        train: bool = False,
        sort_chunk: int = 8192,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_source: Callable[[], int] | None = None,
        pad_multiple: int = 1,
    ) -> None:
        """``epoch_source``: where an iteration reads its epoch (the trainer's ``current_epoch``); without
        one, each iteration advances an epoch counter of its own. ``pad_multiple``: the collator's."""
        super().__init__()
        if max_tokens <= 0 or sort_chunk <= 0 or pad_multiple <= 0:
            raise ValueError(f"max_tokens, sort_chunk and pad_multiple must be positive, got {max_tokens}, "
                             f"{sort_chunk} and {pad_multiple}")
        self.src_lengths, self.tgt_lengths = list(src_lengths), list(tgt_lengths)
        self.pad_multiple = pad_multiple
        self.max_tokens, self.train, self.sort_chunk, self.seed = max_tokens, train, sort_chunk, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch_source = epoch_source
        self.epoch = 0  # the next iteration's epoch when there is no epoch_source
        self._cached: tuple[int, list[list[int]]] | None = None

    def batches(self, epoch: int = 0) -> list[list[int]]:
        """This rank's batches for an epoch (the epoch matters in training only)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        n = len(self.src_lengths)
        if n == 0:
            return []
        # Training: the run seed and the epoch; evaluation: always the same order, whatever the run seed.
        rng = torch.Generator().manual_seed(self.seed + epoch if self.train else 0)
        order = torch.randperm(n, generator=rng) if self.train else torch.arange(n)
        chunk = self.sort_chunk if self.train else max(n, 1)
        src, tgt = torch.tensor(self.src_lengths), torch.tensor(self.tgt_lengths)
        batches: list[list[int]] = []
        for start in range(0, n, chunk):
            idx = order[start : start + chunk]
            key = src[idx] * (int(tgt.max()) + 1) + tgt[idx]  # by source length, then target length
            batches += self._cut(idx[torch.argsort(key, stable=True)].tolist())
        batches = [batches[i] for i in torch.randperm(len(batches), generator=rng).tolist()]
        if self.num_replicas > 1:
            if self.train:
                batches = batches[: len(batches) // self.num_replicas * self.num_replicas]
            batches = batches[self.rank :: self.num_replicas]
        self._cached = (epoch, batches)
        return batches

    def _cut(self, indices: list[int]) -> list[list[int]]:
        out: list[list[int]] = []
        batch: list[int] = []
        longest_src = longest_tgt = 0
        for i in indices:
            s, t = max(longest_src, self.src_lengths[i]), max(longest_tgt, self.tgt_lengths[i])
            if batch and (len(batch) + 1) * self._padded(s, t) > self.max_tokens:
                out.append(batch)
                batch, s, t = [], self.src_lengths[i], self.tgt_lengths[i]
            batch.append(i)
            longest_src, longest_tgt = s, t
        if batch:
            out.append(batch)
        return out

    def _padded(self, longest_src: int, longest_tgt: int) -> int:
        """Source + target width of a batch with these longest pairs, as the collator pads it."""
        return -(-longest_src // self.pad_multiple) * self.pad_multiple + \
            -(-longest_tgt // self.pad_multiple) * self.pad_multiple

    def padding_share(self, epoch: int = 0) -> float:
        """Share of the padded batch tokens (source + target) that are padding."""
        padded = real = 0
        for batch in self.batches(epoch):
            src = [self.src_lengths[i] for i in batch]
            tgt = [self.tgt_lengths[i] for i in batch]
            padded += len(batch) * self._padded(max(src), max(tgt))
            real += sum(src) + sum(tgt)
        return 1.0 - real / padded if padded else 0.0

    def __iter__(self) -> Iterator[list[int]]:
        # A generator, so that the epoch is read at the first batch: a resumed run makes its iterator before
        # the trainer has moved to the epoch it resumes in. (Lightning's own set_epoch reaches samplers only,
        # and after resuming at an epoch end it passes the epoch after the one being trained.)
        if self.epoch_source is not None:
            self.epoch = self.epoch_source()
        batches = self.batches(self.epoch)
        if self.train:
            self.epoch += 1
        yield from batches

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


# -------------------------------------------------------------------- the data module
class ParallelDataModule(TokenizedData, L.LightningDataModule):
    """Train/val/test pairs -> token-budget batches for teacher forcing and translation metrics."""

    data_option = "parallel"  # the conf/data option it is; train.check_pairing compares the two

    def __init__(
        self,
        task: Literal["tsv", "synthetic"] = "tsv",
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        # the options of both token data modules (data/tokenizer.py checks the tokenizer's alike)
        tokenizer_path: str | None = None, vocab_size: int = 8000, min_frequency: int = 2, lowercase: bool = False,
        num_workers: int = 0, cache_dir: str = ".cache", tokenize_processes: int | None = None,
        # Hugging Face datasets as files (hf:<path>): their columns
        source_column: str = "source", target_column: str = "target",
        # batching by token budget
        max_len: int = 128, max_tokens: int = 4096, eval_max_tokens: int = 8192, sort_chunk: int = 8192,
        pad_multiple: int = 1,
        # the synthetic reversal task (task: synthetic)
        synthetic_train_size: int = 20000, synthetic_val_size: int = 500, synthetic_test_size: int = 500,
        synthetic_min_len: int = 3, synthetic_max_len: int = 10, synthetic_symbols: int = 20, synthetic_seed: int = 0,
    ) -> None:
        """``task: tsv`` reads ``train_file``/``val_file``/``test_file`` (``test_file: null`` tests on the
        validation file); ``task: synthetic`` generates the reversal task (the ``synthetic_*`` keys) instead.
        ``max_len``: tokens per side, [BOS]/[EOS] included (longer pairs are skipped). ``max_tokens``: padded
        source + target tokens per training batch (``eval_max_tokens`` for validation and test)."""
        super().__init__()
        require(task in ("tsv", "synthetic"), "data.task", task, "tsv or synthetic")
        require(max_len >= 2, "data.max_len", max_len, ">= 2 (a token and [EOS])")
        if min(max_tokens, eval_max_tokens) < 2 * max_len:
            raise ConfigError(
                f"data.max_tokens ({max_tokens}) and data.eval_max_tokens ({eval_max_tokens}) must be >= 2 * max_len "
                f"({2 * max_len}, data.max_len={max_len}), so that the longest pair fits in a batch"
            )
        n_special = len(SEQ2SEQ_SPECIAL_TOKENS)
        byte_level = (n_special + 256, f"for a byte-level BPE ({n_special} special tokens and 256 byte symbols)")
        check_tokenizer_options(vocab_size, min_frequency, num_workers, SEQ2SEQ_SPECIAL_TOKENS,
                                *(byte_level if task == "tsv" else (None, "")))
        positive("data.sort_chunk", sort_chunk)
        positive("data.pad_multiple", pad_multiple)
        if task == "synthetic":
            in_interval("data.synthetic_symbols", synthetic_symbols, 2, len(SYMBOLS))
            if not 1 <= synthetic_min_len <= synthetic_max_len < max_len:
                raise ConfigError(
                    f"need 1 <= data.synthetic_min_len ({synthetic_min_len}) <= data.synthetic_max_len "
                    f"({synthetic_max_len}) < data.max_len ({max_len})"
                )
            for split, size in (("train", synthetic_train_size), ("val", synthetic_val_size),
                                ("test", synthetic_test_size)):
                positive(f"data.synthetic_{split}_size", size)
        self.save_hyperparameters()
        self.cache_dir = Path(cache_dir).expanduser()
        self.files: dict[str, Path | None] = {}
        if task == "tsv":  # resolved now: a missing file stops the run before anything heavy starts
            self.files = {"train": self._tsv(train_file, "train_file"), "val": self._tsv(val_file, "val_file"),
                          "test": self._tsv(test_file, "test_file") if test_file is not None else None}
        self.tokenizer: Tokenizer | None = None
        self.datasets: dict[str, PairDataset | ShardedPairs] = {}
        self._warned_header: set[str] = set()  # splits whose header-like first line was warned about

    def _tsv(self, entry: str | None, key: str) -> Path:
        if is_dataset(entry):  # its two columns, written once to a cached TSV file
            h = self.hparams
            return tsv_file(entry, h.source_column, h.target_column, self.cache_dir, key)
        return _tsv(entry, key)

    # ---------------------------------------------------------------- preparing (cached)
    @prepare_once
    def prepare_data(self) -> None:
        """Train (or find) the BPE tokenizer and tokenize every file into the cache: one process per node."""
        if self.hparams.task == "tsv":
            tokenizer = load_tokenizer(self._tokenizer_file(), SEQ2SEQ_SPECIAL_TOKENS)
            for split in SPLITS:
                if self.files[split] is not None:
                    self._token_ids(split, tokenizer)

    def _tokenizer_file(self) -> Path:
        if self.hparams.tokenizer_path:
            return Path(self.hparams.tokenizer_path).expanduser()

        def corpus() -> Iterator[str]:  # both sides of the training pairs, streamed: one joint vocabulary
            self._check_train_file()  # before any tokenizer is trained on it
            return (side for text in text_chunks([self.files["train"]]) for side in _sides(parse_pairs(text)[0]))

        return load_or_train_tokenizer(
            [self.files["train"]], corpus, self.cache_dir, self.hparams.vocab_size,
            self.hparams.min_frequency, self.hparams.lowercase, kind="bpe",
        )

    def _check_train_file(self) -> None:
        """Refuse a training file without a pair or with fewer pairs than one batch, and warn about a header line:
        read until enough pairs are seen (the first chunk, for any real file)."""
        path, enough = self.files["train"], self.hparams.max_tokens // (2 * self.hparams.max_len) + 1
        n_pairs, n_lines, skipped, first = 0, 0, Counter(), None
        for text in text_chunks([path]):
            pairs, chunk_skipped, chunk_lines = parse_pairs(text)
            n_pairs, n_lines, skipped = n_pairs + len(pairs), n_lines + chunk_lines, skipped + chunk_skipped
            first = first or (pairs[0] if pairs else None)
            if n_pairs >= enough:
                break
        if first is None:
            self._no_pairs("train", skipped, n_lines)
        self._warn_header("train", first)
        self._check_train_size(n_pairs, 2 * self.hparams.max_len)

    def _token_ids(self, split: str, tokenizer: Tokenizer) -> tuple[Path, dict[str, Any]]:
        """(folder, manifest) of the file's memory-mapped pair shards, tokenized on a miss; refuses a file without
        a well-formed pair, and a training file smaller than one batch."""
        path = self.files[split]
        tok_hash = cache_key(tokenizer.to_str())
        key = cache_key(file_fingerprint([path]), tok_hash, PAIRS_FORMAT, shards.SHARDS_FORMAT)
        folder = self.cache_dir / "tokens" / key
        if not (folder / "manifest.json").is_file():
            next(text_chunks([path]), None)  # its encoding checks, before any worker starts
        dtype = shards.id_dtype(tokenizer.get_vocab_size())
        manifest = shards.build(folder, shards.jobs_for([path]), encode_pairs, tokenizer, {"dtype": dtype.str},
                         what=f"{split} ({path})", processes=self.hparams.tokenize_processes)
        n_pairs = sum(s["pairs"] for s in manifest["shards"])
        if not n_pairs:
            self._no_pairs(split, _skipped(manifest), _lines(manifest))
        if split == "train":
            self._check_train_size(n_pairs, 2 * self.hparams.max_len)
        return folder, manifest

    def _synthetic(self, split: str) -> list[Pair]:
        h = self.hparams
        size = {"train": h.synthetic_train_size, "val": h.synthetic_val_size, "test": h.synthetic_test_size}
        pairs = synthetic_pairs(size[split], h.synthetic_min_len, h.synthetic_max_len, h.synthetic_symbols,
                                seed=f"{h.synthetic_seed}-{split}")
        if split == "train":
            self._check_train_size(len(pairs), 2 * h.max_len)
        return pairs

    def _warn_header(self, split: str, first: Pair) -> None:
        """Once per split and data module."""
        if split not in self._warned_header and looks_like_header(first):
            self._warned_header.add(split)
            log.warning("%s (data.%s_file): the first pair %r looks like a header of column names; it is trained on "
                        "as a pair: delete that line if it is one", self.files[split], split, "\t".join(first))

    def _check_train_size(self, n_pairs: int, tokens_per_pair: int) -> None:
        """Raise CorpusError when ``n_pairs`` of at most ``tokens_per_pair`` padded tokens (source + target) fit in
        one training batch: every step would then train on the same pairs."""
        h = self.hparams
        if n_pairs * tokens_per_pair > h.max_tokens:
            return
        if h.task == "synthetic":
            where, fix = "the synthetic train split (data.synthetic_train_size)", "raise data.synthetic_train_size"
        else:
            where, fix = f"{self.files['train']} (data.train_file)", "give data.train_file many more pairs"
        raise CorpusError(f"{where} holds only {n_pairs} pair{'' if n_pairs == 1 else 's'}: less than one training "
                          f"batch (data.max_tokens={h.max_tokens} padded tokens), so every step would repeat the "
                          f"same batch. Fix: {fix}")

    def _no_pairs(self, split: str, skipped: Counter, n_lines: int) -> None:
        raise CorpusError(
            f"no usable source<TAB>target pair in {self.files[split]} (data.{split}_file): {n_lines} lines, "
            f"skipped {_reasons(skipped) or 'none'}. Each line needs a source, one tab and a target, "
            f"each at most {self.hparams.max_len - 1} tokens (data.max_len)"
        )

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            if self.hparams.task == "synthetic":
                self.tokenizer = symbol_tokenizer(SYMBOLS[: self.hparams.synthetic_symbols])
            else:
                self.tokenizer = load_tokenizer(self._tokenizer_file(), SEQ2SEQ_SPECIAL_TOKENS)
            if self.trainer is not None and self.trainer.is_global_zero:  # saved with the run
                run_dir = Path(self.trainer.default_root_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                self.tokenizer.save(str(run_dir / "tokenizer.json"))
        if not self.datasets:
            for split in SPLITS:
                if self.hparams.task == "synthetic" or self.files[split] is not None:
                    self.datasets[split] = self._dataset(split)
            self.datasets.setdefault("test", self.datasets["val"])
            train = self.datasets["train"]  # its padded size, now that its lengths are known
            self._check_train_size(len(train), max(train.src_lengths) + max(train.tgt_lengths))
            for split in ("train", "val"):
                sampler = self._sampler(split)
                log.info("%s: %d pairs in %d batches of <= %d padded tokens, %.1f%% padding", split,
                         len(self.datasets[split]), len(sampler), sampler.max_tokens, 100 * sampler.padding_share())

    def _dataset(self, split: str) -> PairDataset | ShardedPairs:
        """The split's pairs that fit ``max_len``; the others are counted in one warning."""
        limit = self.hparams.max_len - 1  # room for [EOS] (source) or [BOS]/[EOS] (target)
        if self.hparams.task == "synthetic":
            pairs = self._synthetic(split)
            sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
            src_ids, tgt_ids = encode_texts(self.tokenizer, sources), encode_texts(self.tokenizer, targets)
            src_len, tgt_len = np.array([len(x) for x in src_ids]), np.array([len(x) for x in tgt_ids])
            skipped, n_lines = Counter(), len(pairs)
        else:
            folder, manifest = self._token_ids(split, self.tokenizer)
            dataset = ShardedPairs(folder, manifest)
            src_len, tgt_len = np.diff(dataset.src_start), np.diff(dataset.tgt_start)
            skipped, n_lines = _skipped(manifest), _lines(manifest)
        fits = (src_len > 0) & (src_len <= limit) & (tgt_len > 0) & (tgt_len <= limit)
        too_long = int(((src_len > limit) | (tgt_len > limit)).sum())
        if too_long:
            skipped["too long"] += too_long
        if int(fits.sum()) + too_long < len(fits):  # a side that encodes to nothing (e.g. only control characters)
            skipped["no tokens"] += len(fits) - int(fits.sum()) - too_long
        if skipped:
            log.warning("%s: skipped %d of %d lines (%s)", self.files.get(split) or f"synthetic {split}",
                        sum(skipped.values()), n_lines, _reasons(skipped))
        if not fits.any():
            self._no_pairs(split, skipped, n_lines)
        keep = np.flatnonzero(fits)
        if self.hparams.task == "synthetic":
            return PairDataset([src_ids[i] for i in keep], [tgt_ids[i] for i in keep],
                               [sources[i] for i in keep], [targets[i] for i in keep])
        dataset.keep(keep)
        self._warn_header(split, dataset.pair_text(0))
        return dataset

    # ---------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def _sampler(self, split: str) -> TokenBudgetBatchSampler:
        train = split == "train"
        trainer = self.trainer
        dataset = self.datasets[split]
        return TokenBudgetBatchSampler(
            dataset.src_lengths, dataset.tgt_lengths,
            self.hparams.max_tokens if train else self.hparams.eval_max_tokens,
            train=train, sort_chunk=self.hparams.sort_chunk,
            seed=torch.initial_seed() % 2**31,  # the run seed (seed_everything)
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            epoch_source=(lambda: trainer.current_epoch) if train and trainer is not None else None,
            pad_multiple=self.hparams.pad_multiple,
        )

    def _loader(self, split: str) -> DataLoader:
        workers = self.hparams.num_workers
        if workers > 0:
            # Workers never tokenize; saying so keeps `tokenizers` from warning in every forked worker.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return DataLoader(
            self.datasets[split],
            batch_sampler=self._sampler(split),
            num_workers=workers,
            collate_fn=PairCollator(self.special_id(PAD), self.special_id(BOS), self.special_id(EOS),
                                    self.hparams.pad_multiple),
            persistent_workers=workers > 0,
        )


def _tsv(path: str | None, key: str) -> Path:
    if path is None:
        raise DataNotFoundError(f"data.{key} is null: give a source<TAB>target file (or set data.task=synthetic)")
    resolved = Path(os.path.expanduser(str(path)))
    if not resolved.is_file():
        raise DataNotFoundError(
            f"TSV file not found: {resolved} (data.{key}). Fix: set AIGC_DATA_DIR to the folder that holds "
            f"pairs/en-fr/, or point data.{key} at your own UTF-8 file of source<TAB>target lines"
        )
    return resolved


def _sides(pairs: list[Pair]) -> tuple[str, str]:
    """The sources and the targets of some pairs, each side one text of lines."""
    return "\n".join(s for s, _ in pairs), "\n".join(t for _, t in pairs)


def _skipped(manifest: dict[str, Any]) -> Counter:
    return sum((Counter(s["skipped"]) for s in manifest["shards"]), Counter())


def _lines(manifest: dict[str, Any]) -> int:
    return sum(s["lines"] for s in manifest["shards"])


def _reasons(skipped: Counter) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
