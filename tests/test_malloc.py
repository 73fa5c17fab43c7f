"""utils/malloc.py: the launcher keeps freed memory for reuse (glibc), unless the user chose otherwise."""

from __future__ import annotations

import sys

import pytest

from aigc_lab.utils import malloc


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
    """cli() calls it before Hydra and torch allocate anything."""
    import aigc_lab.__main__ as entry
    import aigc_lab.train

    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(aigc_lab.train, "main", lambda: calls.append("main"))
    monkeypatch.setattr(sys, "argv", ["aigc_lab", "experiment=gan_mnist"])
    entry.cli()
    assert calls == ["malloc", "main"]
