"""The memory allocator of training processes: mimalloc where it is installed, else glibc malloc tuned.

Activations and gradients are allocated and freed every step. glibc's malloc serves them from one heap that
does not sort blocks by size: when batch shapes vary (the seq2seq token-budget batches, beam search) or small
long-lived blocks land between the large ones, the heap fragments, and the free memory in its holes stays
resident; with its default settings each large buffer is instead mapped and unmapped per step, and the kernel
zero-fills its pages again every step. mimalloc (Microsoft's allocator; the ``cmeel-mimalloc`` wheel, a
dependency on Linux) keeps blocks of one size class together and returns free pages by itself: a lower peak
memory for every system here, and faster steps for some (BENCHMARKS.md, "mimalloc"). PyTorch has no allocator
setting for CPU tensors, so the allocator is chosen the way ``torch.backends.xeon.run_cpu`` chooses jemalloc:
``LD_PRELOAD``, which takes effect only when a process starts. ``use_mimalloc()`` restarts the launcher's
process once, before it imports anything heavy, with mimalloc preloaded: the same pid and command line.

Without mimalloc, ``keep_freed_memory()`` serves allocations up to 32 MB (glibc's upper limit) from the heap and
lets up to 1 GB of free heap stay mapped: no page faults per step, at the price of the fragmentation above.
``release_freed_memory()`` hands free pages back to the kernel (``mi_collect`` or glibc's ``malloc_trim(0)``);
``callbacks/memory.py`` calls it at phase boundaries.

``AIGC_MALLOC`` chooses: ``mimalloc`` (the default; glibc tuned where mimalloc is not installed), ``glibc``
(tuned, no restart) or ``system`` (nothing changed). Nothing here changes an allocator the user chose otherwise:
``LD_PRELOAD`` set (jemalloc, tcmalloc, ...) or their own ``GLIBC_TUNABLES``/``MALLOC_*_``.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024
CHOICE = "AIGC_MALLOC"  # the environment variable
CHOICES = ("mimalloc", "glibc", "system")
MIMALLOC_DIST = "cmeel-mimalloc"


def mimalloc_library() -> str | None:
    """Path of the installed ``cmeel-mimalloc`` wheel's shared library, or None."""
    try:
        files = importlib.metadata.files(MIMALLOC_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "libmimalloc.so":
            path = str(file.locate())
            return path if os.path.exists(path) else None
    return None


def use_mimalloc() -> None:
    """Restart this process with mimalloc preloaded (``os.execv``: same pid, same command line), unless it runs
    with another allocator already, the user chose theirs (see the module docstring), or mimalloc is not
    installed. Call it first thing in an entry point; it returns only when nothing was restarted."""
    if _left_to_the_user() or chosen() != "mimalloc":
        return
    library = mimalloc_library()
    if library is None:
        return
    os.environ["LD_PRELOAD"] = library
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    except OSError:  # carry on with glibc
        del os.environ["LD_PRELOAD"]


def start_with_mimalloc() -> None:
    """``use_mimalloc()`` for a command's entry point: a bad ``AIGC_MALLOC`` ends the command with one line."""
    from aigc_lab.errors import UserError, exit_with

    try:
        use_mimalloc()
    except UserError as err:
        exit_with(str(err))


def chosen() -> str:
    """``AIGC_MALLOC``'s value (default ``mimalloc``); a ConfigError names the choices for any other."""
    value = os.environ.get(CHOICE, "mimalloc").strip().lower()
    if value not in CHOICES:
        from aigc_lab.errors import ConfigError

        raise ConfigError(f"{CHOICE}={value!r}: use {', '.join(CHOICES)} (or unset it for mimalloc)")
    return value


def _left_to_the_user() -> bool:
    """Off Linux, with an allocator preloaded, or the user's own malloc settings."""
    if not sys.platform.startswith("linux") or os.environ.get("LD_PRELOAD"):
        return True
    return "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in os.environ)


def allocator() -> str:
    """The malloc this process runs with: ``mimalloc`` or ``system``."""
    return "mimalloc" if _mimalloc_function("mi_version") is not None else "system"


def _mimalloc_function(name: str):  # noqa: ANN202 - a ctypes function or None
    try:
        return getattr(ctypes.CDLL(None), name)  # the process's global symbols: a preloaded library's too
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Apply the settings above; False (nothing changed) off glibc, when an allocator is preloaded, when the user
    tuned malloc (``GLIBC_TUNABLES``, ``MALLOC_*_``) or chose ``AIGC_MALLOC=system``."""
    if _left_to_the_user() or chosen() == "system":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> bool:
    """Return free pages to the kernel: mimalloc's ``mi_collect(true)``, or glibc's ``malloc_trim(0)`` (which also
    releases free pages in the middle of the heap). True when memory was released (always under mimalloc, which
    does not say); False when none was, or with neither allocator."""
    collect = _mimalloc_function("mi_collect")
    if collect is not None:
        collect.argtypes = [ctypes.c_bool]
        collect(True)
        return True
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(trim(0))
