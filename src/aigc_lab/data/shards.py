"""Token ids of corpora larger than memory: one streaming pass, in parallel over the cores, into memory-mapped
shards.

Each corpus file is cut into byte ranges that end at a line break (``CHUNK_BYTES``); each range is one shard,
encoded by a worker process (``tokenizers`` in one thread per process: its Python-side id lists are the slow part,
and processes run that in parallel too) and written as flat arrays: token ids of the smallest unsigned type that
holds the vocabulary (uint16 under 65,536 tokens) beside per-record lengths. Readers map the arrays
(``np.memmap``), so the memory a split needs does not grow with its size.

The folder of a corpus is named by its cache key (the files' path, size and modification time, the tokenizer and
the format: an edited file gets a new key, never a stale shard). It is written under a temporary name and renamed
once every shard and its manifest are on disk: an interrupted tokenization leaves no folder a later run trusts,
and its leftovers are removed by the next build.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

SHARDS_FORMAT = 1  # part of the cache keys: bump when the layout below changes
CHUNK_BYTES = 8 * 1024 * 1024  # text per shard: a worker holds one chunk and its encodings at a time
ENCODE_BATCH = 2000  # lines per encode_batch call inside a worker
MANIFEST = "manifest.json"
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds ids 0 .. vocab_size - 1."""
    for dtype in (np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"a vocabulary of {vocab_size} tokens does not fit in 32-bit token ids")


@dataclass(frozen=True)
class Job:
    """One shard's work: the bytes ``start`` .. ``end`` of ``path`` (whole lines), written as shard ``name``."""

    path: str
    start: int
    end: int
    name: str

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read(self.end - self.start)


def line_ranges(path: Path, chunk_bytes: int | None = None) -> list[tuple[int, int]]:
    """Byte ranges of about ``chunk_bytes`` (None: ``CHUNK_BYTES``) that cover the file, each ending just after a
    ``\\n`` (or at the end). A ``\\n`` byte is never inside a UTF-8 sequence, so each range decodes on its own."""
    size = Path(path).stat().st_size
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    ranges, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + chunk_bytes, size))
            f.readline()  # to the end of the line the nominal boundary falls in
            end = min(f.tell(), size)
            ranges.append((start, end))
            start = end
    return ranges


def jobs_for(files: Sequence[Path], chunk_bytes: int | None = None) -> list[Job]:
    """The jobs of a split, in file order: the shards concatenated are the files' records in order."""
    jobs = []
    for path in files:
        for start, end in line_ranges(path, chunk_bytes):
            jobs.append(Job(str(path), start, end, f"{len(jobs):05d}"))
    return jobs


def decode(raw: bytes) -> tuple[str, int]:
    """UTF-8 text of a chunk, and how many undecodable sequences became U+FFFD (genuine U+FFFD not counted)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - raw.count("\ufffd".encode())


# ---------------------------------------------------------------------------- writing
Encoder = Callable[[Job, Path, Tokenizer, dict[str, Any]], dict[str, Any]]
_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer_json: str) -> None:
    # One thread per worker process: the processes are the parallelism (and a forked tokenizers would warn).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle: it stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _exit_with_parent()
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _exit_with_parent() -> None:
    """Linux: this worker gets SIGTERM when the process that started it dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run_job(task: tuple[int, Encoder, Job, Path, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    i, encode, job, tmp, options = task
    return i, encode(job, tmp, _worker_tokenizer, options)


def default_processes() -> int:
    """One tokenizing process per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build(folder: Path, jobs: Sequence[Job], encode: Encoder, tokenizer: Tokenizer, options: dict[str, Any],
          what: str, processes: int | None = None) -> dict[str, Any]:
    """Run ``encode(job, tmp_folder, tokenizer, options) -> stats`` over ``jobs`` (each writes its shard's arrays
    into the temporary folder), write the manifest, and rename the folder to ``folder``. Returns the manifest:
    ``{"format", "what", "options", "shards": [job + stats + {"bytes"}], "seconds"}``; each ``stats`` holds the
    shard's ``"tokens"``. ``processes``: workers (None: one per core;
    1: in this process). A progress bar counts the bytes encoded."""
    if (folder / MANIFEST).is_file():
        return read_manifest(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        started = time.perf_counter()
        stats = _encode_all(jobs, encode, tokenizer, options, tmp, what, processes or default_processes())
        seconds = time.perf_counter() - started
        manifest = {"format": SHARDS_FORMAT, "what": what, "options": options, "seconds": seconds,
                    "shards": [{**asdict(job), "bytes": job.end - job.start, **s} for job, s in zip(jobs, stats)]}
        _log_throughput(manifest, folder)
        (tmp / MANIFEST).write_text(json.dumps(manifest))  # last: a folder without it is never read
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same folder first: use theirs
            if not (folder / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return read_manifest(folder)


def _encode_all(jobs: Sequence[Job], encode: Encoder, tokenizer: Tokenizer, options: dict[str, Any], tmp: Path,
                what: str, processes: int) -> list[dict[str, Any]]:
    from tqdm import tqdm

    total = sum(job.end - job.start for job in jobs)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"Tokenizing {what}", file=sys.stderr,
               mininterval=1.0, disable=total < CHUNK_BYTES or None)  # None: off when stderr is no terminal
    stats: list[dict[str, Any] | None] = [None] * len(jobs)
    try:
        if processes <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                stats[i] = encode(job, tmp, tokenizer, options)
                bar.update(job.end - job.start)
        else:
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = context.Pool(min(processes, len(jobs)), _start_worker, (tokenizer.to_str(),))
            try:
                tasks = [(i, encode, job, tmp, options) for i, job in enumerate(jobs)]
                for i, shard_stats in pool.imap_unordered(_run_job, tasks):
                    stats[i] = shard_stats
                    bar.update(jobs[i].end - jobs[i].start)
                pool.close()
            finally:  # after an error or a signal too: the workers are stopped at once, not waited for
                pool.terminate()
                pool.join()
    finally:
        bar.close()
    return stats


def _log_throughput(manifest: dict[str, Any], folder: Path) -> None:
    size = sum(s["bytes"] for s in manifest["shards"])
    tokens = sum(s["tokens"] for s in manifest["shards"])
    seconds = max(manifest["seconds"], 1e-9)
    log.info("Tokenized %s: %d tokens from %.1f MB in %.1f s (%.2f MB/s, %.0f tokens/s), %d shards in %s",
             manifest["what"], tokens, size / 1e6, seconds, size / 1e6 / seconds, tokens / seconds,
             len(manifest["shards"]), folder)


def _remove_leftovers(folder: Path) -> None:
    """Temporary folders of this key whose process is gone (an interrupted build)."""
    for leftover in folder.parent.glob(f".{folder.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_array(tmp: Path, name: str, field: str, values: np.ndarray) -> None:
    values.tofile(tmp / f"{name}.{field}")


# ---------------------------------------------------------------------------- reading
def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


def load_array(folder: Path, shard: dict[str, Any], field: str, dtype: np.dtype, count: int) -> np.ndarray:
    """A shard's array, memory-mapped (read-only); its size is checked against the manifest."""
    path = folder / f"{shard['name']}.{field}"
    expected = count * np.dtype(dtype).itemsize
    if path.stat().st_size != expected:
        raise OSError(f"{path} holds {path.stat().st_size} bytes, its manifest says {expected}: delete {folder}")
    if count == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


class Concatenated:
    """Arrays read as one flat sequence without copying them together: ``span(a, b)`` gathers the elements
    a .. b-1 across array boundaries."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = [a for a in arrays if len(a)]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])  # [n_arrays + 1]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def span(self, start: int, stop: int) -> np.ndarray:
        if start >= stop:
            return np.empty(0, dtype=self.arrays[0].dtype if self.arrays else np.uint8)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop:
            array, offset = self.arrays[first], int(self.starts[first])
            piece = array[start - offset : min(stop, offset + len(array)) - offset]
            pieces.append(piece)
            start += len(piece)
            first += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def all(self) -> np.ndarray:
        """Every element, copied into memory (for the per-record arrays: lengths)."""
        return np.concatenate(self.arrays) if self.arrays else np.empty(0)
