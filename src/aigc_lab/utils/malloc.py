"""glibc malloc settings for training: keep freed memory for reuse instead of handing it back to the kernel.

By default glibc serves every allocation above a (dynamic) threshold with its own ``mmap`` and returns it with
``munmap`` when freed. A training step allocates and frees the same large activation and gradient buffers
every step, so each step maps fresh pages and the kernel zero-fills them on first touch: thousands of minor page
faults per GAN step, which the two settings below remove (the figures and the speed-up: BENCHMARKS.md, "glibc
malloc"). Allocator libraries such as jemalloc or tcmalloc
(``LD_PRELOAD``) do the same job; torch has no setting for it on the CPU.

``keep_freed_memory()`` serves allocations up to 32 MB (glibc's upper limit) from the heap and lets up to
1 GB of free heap stay mapped. The cost is a process that keeps its peak memory until it exits, and more: batches
whose shapes change every step (the seq2seq token-budget batches, beam search) leave holes between long-lived
blocks that glibc cannot trim from the top, so the free heap stays resident and grows with each new shape (with
glibc's defaults as well). ``release_freed_memory()`` (``malloc_trim(0)``) hands every free page of every arena
back to the kernel; ``callbacks/memory.py`` calls it at phase boundaries, where a page fault or two per page
costs nothing next to a validation.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024
OPT_OUT = "AIGC_DEFAULT_MALLOC"  # =1: leave malloc as it is


def keep_freed_memory() -> bool:
    """Apply the settings above; False (nothing changed) off glibc, when an allocator is preloaded, when the user
    tuned malloc (``GLIBC_TUNABLES``, ``MALLOC_*_``) or set ``AIGC_DEFAULT_MALLOC=1``."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "1" or os.environ.get("LD_PRELOAD"):
        return False
    if "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Return the free pages of every malloc arena to the kernel (glibc's ``malloc_trim(0)``, which also releases
    free pages in the middle of the heap). True when memory was released; False when none was, or off glibc."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(trim(0))
