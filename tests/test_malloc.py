"""utils/malloc.py: the launcher restarts under mimalloc where it is installed, else keeps freed memory for reuse
(glibc), unless the user chose otherwise; free memory goes back to the kernel at phase boundaries
(callbacks/memory.py). utils/kernel_caches.py: the launcher bounds oneDNN's per-shape kernel caches before the
first matmul."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from aigc_lab.callbacks.memory import ReleaseFreedMemory
from aigc_lab.utils import kernel_caches, malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_applied_on_glibc(monkeypatch):
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES", malloc.CHOICE):
        monkeypatch.delenv(name, raising=False)
    assert malloc.keep_freed_memory() is True


@pytest.mark.parametrize("env", [{"AIGC_MALLOC": "system"}, {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},
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


# Prints its pid, restarts itself under mimalloc, then prints the allocator, its pid and whether a release worked.
RESTART = """
import os
from aigc_lab.utils import malloc
print(os.getpid(), flush=True)
malloc.use_mimalloc()
print(malloc.allocator(), os.getpid(), malloc.release_freed_memory())
"""


def _restart(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", malloc.CHOICE)}
    proc = subprocess.run([sys.executable, "-c", RESTART], env={**clean, **env}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cmeel-mimalloc is a dependency on Linux only")
def test_restarts_under_mimalloc_once():
    """Same pid and command line, mimalloc's symbols in the process, its release called; the library is the
    installed wheel's."""
    assert malloc.mimalloc_library() is not None
    first_pid, second_pid, name, pid, released = _restart()
    assert first_pid == second_pid == pid  # one restart (os.execv keeps the pid), the script run again
    assert (name, released) == ("mimalloc", "True")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cmeel-mimalloc is a dependency on Linux only")
@pytest.mark.parametrize("env", [{"AIGC_MALLOC": "glibc"}, {"AIGC_MALLOC": "system"}, {"MALLOC_ARENA_MAX": "2"}])
def test_no_restart_when_the_user_chose(env):
    pid, name, same_pid, _ = _restart(**env)
    assert (name, same_pid) == ("system", pid)


def test_a_bad_choice_is_one_line(monkeypatch):
    from aigc_lab.errors import ConfigError

    monkeypatch.setenv("AIGC_MALLOC", "jemalloc")
    with pytest.raises(ConfigError, match="AIGC_MALLOC='jemalloc': use mimalloc, glibc, system"):
        malloc.use_mimalloc()


def test_the_command_restarts_before_the_launcher(monkeypatch):
    import aigc_lab.__main__ as entry

    calls = []
    monkeypatch.setattr(malloc, "start_with_mimalloc", lambda: calls.append("mimalloc"))
    monkeypatch.setattr(entry, "cli", lambda: calls.append("cli"))
    entry.main()
    assert calls == ["mimalloc", "cli"]


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
