"""What a request needs of this machine's memory and disk, checked before any work starts: a size that cannot
fit is refused in one line that names the config key, the estimate, the limit and the fix, e.g.

    data.block_size=100000 needs about 5.1 TB of memory for one training batch (attention scores: 2 x batch 32
    x 2 heads x 100000^2 x 2 layers x 4 bytes), this machine has 23 GB available: use data.block_size <= 4300

Every system describes its needs (``System.memory_needs``, systems/spec.py; ``generate`` its own) as ``Need``s:
the config keys an estimate grows with, and a function of them that returns the estimate in named ``Part``s.
``check_memory`` compares each with a ``Limit`` and, when one does not fit, finds for each key the largest value
that fits with the others as they are (the estimates grow with every key), and names the key that is furthest
out of proportion.

The estimates are conservative: every value counts 4 bytes (fp32; mixed precision halves the activations), and
attention is counted as if its score matrices were materialized (sdpa's math path, which any attention mask or
dropout may select). A Transformer, per process and batch (B sequences of L tokens, width D, H heads, MLP width F,
vocabulary V, P parameters):

    training     16 x P                                  weights, gradients and AdamW's two moments
               + 4 x B x L x (10 D + 2 F) per encoder layer    activations kept for backward
               + 4 x B x T x (15 D + 2 F) + 4 x 2 x B x S x D per decoder layer (T target, S source tokens)
               + 4 x 2 x B x H x L^2 per self-attention, 2 x B x H x T x S per cross-attention  (scores, softmax)
               + 4 x 4 x B x L x D                            embeddings and final LayerNorms
               + 4 x 3 x rows x V                             logits, log-softmax and their gradient
    evaluation   the parameters (16 x P during a fit, 4 x P alone) + one layer's working set, the same terms
                 for one layer, + the logits; beam search adds its key/value cache and per-step logits.

Convolutional networks (the GAN, the FID classifier) count the outputs of every layer for one sample, found by
running the network on PyTorch's meta device (shapes only, no memory), times the batch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aigc_lab.errors import ResourceError

VALUE_BYTES = 4  # fp32: a conservative size for every value (mixed precision keeps activations in 2 bytes)
TRAIN_STATE_BYTES = 16  # per parameter while training: weight, gradient and Adam's two moments, 4 bytes each


@dataclass(frozen=True)
class Part:
    """One term of an estimate: its name, its size in bytes, and how it was computed (shown when it dominates)."""

    name: str
    bytes: float
    formula: str


@dataclass(frozen=True)
class Need:
    """An estimate as a function of config sizes. ``sizes``: config key -> value; ``lowest``: the smallest value
    a fix may suggest for a key (default 1); ``parts``: sizes -> the estimate's parts. ``hints``: config key -> a
    fix of another kind, added to the message when that key is the one named (e.g. writing to disk in chunks)."""

    what: str
    sizes: dict[str, int]
    parts: Callable[[Mapping[str, int]], list[Part]]
    lowest: dict[str, int] | None = None
    hints: dict[str, str] | None = None

    def total(self, sizes: Mapping[str, int] | None = None) -> float:
        return sum(part.bytes for part in self.parts(self.sizes if sizes is None else sizes))


@dataclass(frozen=True)
class Limit:
    """What a need may use: bytes, which resource, and how a message says it (``this machine has 23 GB
    available``)."""

    bytes: float
    resource: str  # "memory" or "disk space"
    text: str


# -------------------------------------------------------------------- checking
def check_memory(needs: list[Need], limit: Limit) -> None:
    """Raise ResourceError (one line: the key, the estimate, its largest part, the limit, the fix) for the first
    need that exceeds ``limit``."""
    for need in needs:
        total = need.total()
        if total > limit.bytes:
            raise ResourceError(refusal(need, total, limit))


def refusal(need: Need, total: float, limit: Limit) -> str:
    fits = {key: largest_fit(need, key, limit.bytes) for key in need.sizes}
    feasible = {key: fit for key, fit in fits.items() if fit is not None}
    biggest = max(need.parts(need.sizes), key=lambda part: part.bytes)
    cause = f"({biggest.name}: {biggest.formula})"
    key = None
    if feasible:
        # The key furthest out of proportion: the largest factor between its value and the largest that fits.
        key = max(feasible, key=lambda k: need.sizes[k] / max(feasible[k], 1))
        fixes = [f"{key} <= {feasible[key]}"] + [f"{k} <= {fit}" for k, fit in feasible.items() if k != key]
        fix = "use " + " or ".join(fixes)
        subject = f"{key}={need.sizes[key]}"
    else:
        subject = " with ".join(f"{k}={v}" for k, v in need.sizes.items()) or "this request"
        fix = f"no value of {' or '.join(need.sizes)} alone fits: lower several of them" if need.sizes else ""
        if biggest.name.startswith("parameters"):
            fix = f"{fix}, or use a smaller model" if fix else "use a smaller model"
    hint = (need.hints or {}).get(key) if key is not None else None
    if hint:
        fix += f", or {hint}"
    return (f"{subject} needs about {format_bytes(total)} of {limit.resource} for {need.what} {cause}, "
            f"{limit.text}: {fix}")


def largest_fit(need: Need, key: str, budget: float) -> int | None:
    """The largest value of ``key`` below its current one whose estimate fits ``budget`` (the other sizes as they
    are), or None when even its lowest value does not fit."""
    low = (need.lowest or {}).get(key, 1)
    high = need.sizes[key]

    def fits(value: int) -> bool:
        return need.total({**need.sizes, key: value}) <= budget

    if high <= low or not fits(low):
        return None
    while high - low > 1:  # invariant: fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def format_bytes(n: float) -> str:
    """``4.1e10`` -> ``41 GB``; ``5.1e12`` -> ``5.1 TB``; decimal units, two significant digits."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


# -------------------------------------------------------------------- limits of this machine
def host_memory_available() -> int:
    """Bytes of RAM a new allocation can get: ``MemAvailable`` of /proc/meminfo (psutil's value where there is
    no /proc), lowered to what a cgroup memory limit (a container, a SLURM job) leaves."""
    available = _meminfo_available()
    if available is None:
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except ImportError:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    left = _cgroup_left()
    return min(available, left) if left is not None else available


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_left() -> int | None:
    """The cgroup's memory limit minus its usage (cgroup v2, else v1), or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 writes a huge number for "no limit"
            return max(int(limit) - usage, 0)
    return None


def memory_limit(trainer: Mapping[str, Any] | None = None) -> Limit:
    """The memory one training or testing process may use: the free memory of GPU 0 for a GPU run, else this
    machine's available RAM shared by the processes a CPU run starts (``trainer.devices``)."""
    trainer = trainer or {}
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(0)
        return Limit(free, "GPU memory", f"GPU 0 has {format_bytes(free)} free")
    available = host_memory_available()
    processes = _cpu_processes(trainer.get("devices", 1))
    if processes > 1:
        return Limit(available / processes, "memory",
                     f"this machine has {format_bytes(available)} available for {processes} processes "
                     f"(trainer.devices={processes})")
    return Limit(available, "memory", f"this machine has {format_bytes(available)} available")


def _cpu_processes(devices: Any) -> int:
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return max(int(devices), 1)
    if isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return max(len(devices), 1)
    return 1


def disk_limit(path: str | Path) -> Limit:
    """Free disk space where ``path`` (a file to write) would go: its nearest existing ancestor's file system."""
    path = Path(path).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    return Limit(free, "disk space", f"{existing} has {format_bytes(free)} free")


# -------------------------------------------------------------------- Transformers
@dataclass(frozen=True)
class TransformerShape:
    """What the estimates read of a Transformer config: width, heads, MLP width, encoder and decoder layers."""

    d_model: int
    n_heads: int
    mlp_width: int
    enc_layers: int
    dec_layers: int = 0

    @classmethod
    def of(cls, cfg: Any) -> TransformerShape:
        """From an MLMConfig (n_layers) or a Seq2SeqConfig (n_enc_layers, n_dec_layers)."""
        return cls(cfg.d_model, cfg.n_heads, int(cfg.mlp_ratio * cfg.d_model),
                   getattr(cfg, "n_enc_layers", getattr(cfg, "n_layers", 0)), getattr(cfg, "n_dec_layers", 0))


def encoder_block_params(d: int, f: int) -> int:
    """LayerNorms 2 x 2D, fused qkv 3D^2 + 3D, output projection D^2 + D, MLP 2DF + F + D."""
    return 4 * d * d + 2 * d * f + 9 * d + f


def decoder_block_params(d: int, f: int) -> int:
    """An encoder block plus a LayerNorm (2D) and cross-attention (q, fused kv, projection: 4D^2 + 4D)."""
    return 8 * d * d + 2 * d * f + 15 * d + f


def mlm_params(shape: TransformerShape, vocab: int, positions: int, embedding_norm: bool = False,
               head_transform: bool = True) -> int:
    """MaskedLM: token table V x D (tied output) and its bias V, position table, blocks, final LayerNorm, and where
    the layout has them the embedding LayerNorm (2D) and the head transform (D^2 + D and a LayerNorm)."""
    d, f = shape.d_model, shape.mlp_width
    extra = (2 * d if embedding_norm else 0) + (d * d + 3 * d if head_transform else 0)
    return vocab * (d + 1) + positions * d + shape.enc_layers * encoder_block_params(d, f) + 2 * d + extra


def seq2seq_params(shape: TransformerShape, vocab: int, positions: int, tied: bool = True) -> int:
    """Seq2SeqTransformer: shared token table (and an output matrix when untied), output bias, two position
    tables, encoder and decoder blocks, two final LayerNorms."""
    d, f = shape.d_model, shape.mlp_width
    return (vocab * (d + 1) + (0 if tied else vocab * d) + 2 * positions * d + 4 * d
            + shape.enc_layers * encoder_block_params(d, f) + shape.dec_layers * decoder_block_params(d, f))


def transformer_parts(shape: TransformerShape, params: int, batch: int, src_len: int, tgt_len: int = 0,
                      logit_rows: int = 0, vocab: int = 0, training: bool = True,
                      state_bytes: int = TRAIN_STATE_BYTES) -> list[Part]:
    """The parts of one batch (module docstring): parameters and their state (``state_bytes`` per parameter),
    activations, attention scores and logits; ``training`` keeps every layer's activations for backward,
    evaluation one layer's. ``src_len`` is the encoder's length (the only one of an encoder-only model)."""
    d, h, f, b = shape.d_model, shape.n_heads, shape.mlp_width, batch
    s, t = src_len, tgt_len
    enc, dec = (shape.enc_layers, shape.dec_layers) if training else (min(shape.enc_layers, 1),
                                                                        min(shape.dec_layers, 1))
    # encoder layer: x, LayerNorm, q, k, v, attention out, projection, x, LayerNorm, MLP out (10 D) + 2 F;
    # decoder layer: 15 D + 2 F per target token, and the cross-attention's keys and values of the source (2 D)
    activations = enc * b * s * (10 * d + 2 * f) + dec * (b * t * (15 * d + 2 * f) + 2 * b * s * d)
    activations += 4 * b * (s + t) * d  # embeddings (sum, dropout) and final LayerNorms
    scores = 2 * b * h * (enc * s * s + dec * (t * t + t * s))  # scores and softmax, [B, H, queries, keys] each
    per_token = f"(10 x {d} + 2 x {f}) x {enc} layer{'s' if enc != 1 else ''}"
    if dec:
        per_token = f"({per_token} + (15 x {d} + 2 x {f}) x {dec} layer{'s' if dec != 1 else ''})"
    lengths = f"{s}^2 x {enc} layer{'s' if enc != 1 else ''}"
    if dec:
        lengths = f"({lengths} + ({t}^2 + {t} x {s}) x {dec} layer{'s' if dec != 1 else ''})"
    parts = [
        Part("parameters" + (" with gradients and AdamW state" if state_bytes > VALUE_BYTES else ""),
             state_bytes * params, f"{state_bytes} bytes x {params:,} parameters"),
        Part("activations", VALUE_BYTES * activations,
             f"batch {b} x {s + t} tokens x {per_token} x 4 bytes"),
        Part("attention scores", VALUE_BYTES * scores, f"2 x batch {b} x {h} heads x {lengths} x 4 bytes"),
    ]
    if logit_rows and vocab:
        parts.append(Part("logits", VALUE_BYTES * 3 * logit_rows * vocab,
                          f"3 x {logit_rows:,} positions x vocabulary {vocab:,} x 4 bytes"))
    return parts


def beam_search_parts(shape: TransformerShape, rows: int, cached_positions: int, vocab: int) -> list[Part]:
    """Beam search over ``rows`` hypotheses (sentences x beam): the decoder's key/value cache (self- and
    cross-attention, 2 x D per position and layer) and each step's logits, log-probabilities and candidates."""
    d, layers = shape.d_model, shape.dec_layers
    return [
        Part("beam-search cache", VALUE_BYTES * 2 * layers * d * cached_positions,
             f"2 x {layers} layers x d_model {d} x {cached_positions:,} cached positions x 4 bytes"),
        Part("beam-search logits", VALUE_BYTES * 4 * rows * vocab,
             f"4 x {rows:,} hypotheses x vocabulary {vocab:,} x 4 bytes"),
    ]


# -------------------------------------------------------------------- convolutional networks
def layer_output_elements(module: nn.Module, *inputs: torch.Tensor | None) -> int:
    """The number of values every layer of ``module`` (a module without sub-layers) outputs for ``inputs``: run it
    on meta tensors (build both under ``torch.device("meta")``), so nothing is computed or allocated. A layer with
    a parametrized weight (spectral norm) is a layer: its parametrization computes a weight, not an output."""
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    weights = {id(p) for m in module.modules() if hasattr(m, "parametrizations") for p in m.parametrizations.modules()}
    layers = [m for m in module.modules()
              if id(m) not in weights and all(name == "parametrizations" for name, _ in m.named_children())]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def param_count(*modules: nn.Module) -> int:
    """The parameters of ``modules``, counted."""
    return sum(p.numel() for m in modules for p in m.parameters())


def per_sample_part(name: str, per_sample: int, batch: int, what: str) -> Part:
    """``batch`` samples of ``per_sample`` values, 4 bytes each."""
    return Part(name, VALUE_BYTES * per_sample * batch, f"batch {batch:,} x {per_sample:,} {what} x 4 bytes")
