"""Bounded oneDNN kernel caches: CPU memory that stays flat when batch shapes vary.

On CPU, bf16 matmuls go through oneDNN, which keeps every primitive it builds (JIT kernels, each with its own
buffers) in two LRU caches keyed by shape: oneDNN's own (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and ideep's in
front of it (``LRU_CACHE_CAPACITY``), 1024 entries each by default. A batch of a new shape (the seq2seq
token-budget batches: every step its own batch size and lengths) builds a dozen or more primitives, so both
caches fill up to their capacity and hold hundreds of MB that a step never reuses: one epoch cycles through
more shapes than the caches hold, so an LRU cache of 1024 entries misses as often as one of 128. What one step
reuses (the same layer shape across layers, forward and backward) fits in 128 entries, and fixed-shape systems
(the GAN, the masked LM) build far fewer.

Both libraries read their variable once, when their first primitive is built, so ``bound_kernel_caches()`` must
run before the first matmul (the launcher calls it at start). A capacity the user set is left alone; 0 is not
offered: ideep's cache of 0 entries crashes.
"""

from __future__ import annotations

import os

CAPACITY = 128
VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's cache, ideep's cache


def bound_kernel_caches(capacity: int = CAPACITY) -> dict[str, str]:
    """Set each cache's capacity the user did not set; returns what was set."""
    if capacity < 1:
        raise ValueError(f"a kernel cache capacity must be >= 1, got {capacity}")
    chosen = {name: str(capacity) for name in VARIABLES if name not in os.environ}
    os.environ.update(chosen)
    return chosen
