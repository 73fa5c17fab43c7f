"""utils/malloc.py: the launcher keeps freed memory for reuse (glibc), unless the user chose otherwise; the free heap
goes back to the kernel at phase boundaries (callbacks/memory.py). utils/kernel_caches.py: the launcher bounds
oneDNN's per-shape kernel caches before the first matmul."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

from aigc_lab.callbacks.memory import ReleaseFreedMemory
from aigc_lab.utils import kernel_caches, malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_applied_on_glibc(monkeypatch):
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES", malloc.OPT_OUT):
        monkeypatch.delenv(name, raising=False)
    assert malloc.keep_freed_memory() is True


@pytest.mark.parametrize("env", [{"AIGC_DEFAULT_MALLOC": "1"}, {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
                                 {"MALLOC_TRIM_THRESHOLD_": "0"}])
def test_left_alone_when_the_user_chose(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert malloc.keep_freed_memory() is False


def test_the_launcher_applies_it_first(monkeypatch):
    """cli() calls both before Hydra and torch allocate anything."""
    import aigc_lab.__main__ as entry
    import aigc_lab.train

    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(kernel_caches, "bound_kernel_caches", lambda: calls.append("caches") or {})
    monkeypatch.setattr(aigc_lab.train, "main", lambda: calls.append("main"))
    monkeypatch.setattr(sys, "argv", ["aigc_lab", "experiment=gan_mnist"])
    entry.cli()
    assert calls == ["malloc", "caches", "main"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_returns_free_heap():
    """Freed blocks in the middle of the heap (a live one above them: no trim from the top) go back at once."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 << 10) for _ in range(128)]  # under glibc's smallest mmap threshold: on the heap
    pin = libc.malloc(1024)
    for block in blocks:
        ctypes.memset(block, 1, 64 << 10)  # resident
        libc.free(block)
    assert malloc.release_freed_memory() is True
    libc.free(pin)


def test_kernel_caches_bounded_unless_the_user_set_them(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "512")
    assert kernel_caches.bound_kernel_caches() == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(kernel_caches.CAPACITY)}
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(kernel_caches.CAPACITY)
    assert os.environ["LRU_CACHE_CAPACITY"] == "512"
    with pytest.raises(ValueError):  # ideep crashes with a cache of 0 entries
        kernel_caches.bound_kernel_caches(0)


def test_callback_releases_at_phase_boundaries(monkeypatch):
    """Before and after validation, before the test, at the end of the fit and every N training steps."""
    import aigc_lab.callbacks.memory as memory

    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1) or True)
    cb, trainer = ReleaseFreedMemory(every_n_steps=50), SimpleNamespace(global_step=0)
    for step in range(0, 151):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, None, step)
    assert len(calls) == 3  # steps 50, 100, 150
    for hook in (cb.on_validation_start, cb.on_validation_end, cb.on_test_start, cb.on_fit_end):
        hook(trainer, None)
    assert len(calls) == cb.released == 7
    with pytest.raises(ValueError):
        ReleaseFreedMemory(every_n_steps=0)


def test_callback_in_every_preset():
    """The default callbacks hold it, so every experiment gets it."""
    from hydra import compose, initialize_config_dir

    from aigc_lab.utils.paths import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base=None):
        for experiment in ("gan_mnist", "mlm_pydocs", "seq2seq_en_fr"):
            cfg = compose("train", overrides=[f"experiment={experiment}"])
            assert cfg.callbacks.release_memory._target_ == "aigc_lab.callbacks.ReleaseFreedMemory"
