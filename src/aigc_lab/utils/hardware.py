"""What this machine is, and the settings that are fastest on it.

A config value ``auto`` (``trainer.precision``, a GAN's ``model.channels_last``, an optimizer's ``fused``) is
resolved here at launch, per machine, never per preset:

- precision on a CPU: ``bf16-mixed`` only where bf16 is native (AMX tiles or AVX512_BF16, with torch's kernels
  allowed to use them), else ``32-true``: emulated bf16 matmuls are about 100x slower than fp32 ones.
- precision on CUDA: ``bf16-mixed`` where the GPU really has bf16 (compute capability >= 8), else ``16-mixed``.
- ``channels_last``: on for convolutions on a CPU (faster there in fp32 and in bf16, BENCHMARKS.md) and under
  mixed precision on CUDA (tensor-core kernels take NHWC); off otherwise.
- ``fused`` optimizer kernels: on, except under ``16-mixed`` with gradient clipping, which Lightning refuses.

``AIGC_CPU_BF16=native|emulated`` overrides the CPU probe (tests, or a machine the probe misjudges).
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("aigc_lab")

AUTO = "auto"
CPU_BF16_ENV = "AIGC_CPU_BF16"
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below the first one with bf16 dot products (AVX512_CORE_BF16)
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class CPUKind:
    """A CPU as far as training speed goes: its model, torch's vector capability and native bf16."""

    model: str
    capability: str  # torch.backends.cpu.get_cpu_capability(): AVX2, AVX512, DEFAULT, ...
    amx: bool
    avx512_bf16: bool
    native_bf16: bool
    probe: str = "cpu"  # "cpu" (the probes below) or the AIGC_CPU_BF16 override

    def describe(self) -> str:
        bf16 = "native bf16" if self.native_bf16 else "no native bf16"
        via = [name for name, has in (("AMX", self.amx), ("AVX512_BF16", self.avx512_bf16)) if has]
        override = f", {CPU_BF16_ENV} override" if self.probe != "cpu" else ""
        return f"{self.model} ({self.capability}, {bf16}{' via ' + '+'.join(via) if self.native_bf16 and via else ''}" \
               f"{override})"

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "capability": self.capability, "amx": self.amx,
                "avx512_bf16": self.avx512_bf16, "native_bf16": self.native_bf16, "probe": self.probe}


def cpu_kind() -> CPUKind:
    """Probe this CPU (cpuinfo flags as torch reads them, torch's dispatch capability, oneDNN's ISA cap)."""
    capability = torch.backends.cpu.get_cpu_capability()
    amx = _probe("_is_amx_tile_supported")
    avx512_bf16 = _probe("_is_avx512_bf16_supported")
    # ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2 keep torch's kernels off the bf16 instructions even
    # where the CPU has them: then bf16 is emulated, as on a CPU without them.
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    native = (amx or avx512_bf16) and capability.startswith("AVX512") and isa_cap not in _ONEDNN_NO_BF16
    override = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if override:
        if override not in ("native", "emulated"):
            from aigc_lab.errors import ConfigError

            raise ConfigError(f"{CPU_BF16_ENV}={override!r}: use native or emulated (or unset it to probe the CPU)")
        native = override == "native"
    return CPUKind(cpu_model(), capability, amx, avx512_bf16, native, probe=f"{CPU_BF16_ENV}={override}"
                   if override else "cpu")


def _probe(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)  # private, cpuinfo-based; absent in some torch builds
    try:
        return bool(fn()) if fn is not None else False
    except Exception:
        return False


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line naming the machine for a benchmark's output: CPU kind, threads, and the GPU if any."""
    from aigc_lab.utils.malloc import allocator

    line = f"CPU {cpu_kind().describe()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, " \
           f"malloc {allocator()}"
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(0)}"
    return line


# ---------------------------------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class Choice:
    """A resolved ``auto`` setting: where it lives in the config, the value chosen and why."""

    key: str
    value: Any
    reason: str


def device_type(accelerator: Any) -> str:
    """``trainer.accelerator`` -> the device it trains on: cuda, mps or cpu (as Lightning's ``auto`` picks)."""
    name = str(accelerator or AUTO).lower()
    if name in ("gpu", "cuda"):
        return "cuda"
    if name == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return name


def resolve_precision(device: str) -> Choice:
    """The fastest precision that trains well on ``device`` (cuda, mps or cpu)."""
    key = "trainer.precision"
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Choice(key, "bf16-mixed", f"GPU {name} (compute capability {major}.{minor}) has native bf16")
        return Choice(key, "16-mixed", f"GPU {name} (compute capability {major}.{minor}) has no native bf16: "
                                       f"fp16 autocast with loss scaling")
    if device == "mps":
        return Choice(key, "32-true", "mixed precision on Apple GPUs is not measured by this project")
    cpu = cpu_kind()
    if cpu.native_bf16:
        return Choice(key, "bf16-mixed", f"CPU {cpu.describe()}")
    return Choice(key, "32-true", f"CPU {cpu.describe()}: bf16 would be emulated, many times slower than fp32")


def resolve_channels_last(device: str, precision: str) -> Choice:
    key = "channels_last"
    if device == "cpu":
        return Choice(key, True, "oneDNN's NHWC convolutions are faster on a CPU, fp32 and bf16 alike")
    if device == "cuda" and "16" in precision:
        return Choice(key, True, "tensor-core convolutions take NHWC under mixed precision")
    return Choice(key, False, f"no gain measured on {device} in {precision}")


def resolve_fused(precision: str, clipping: bool) -> Choice:
    key = "fused"
    if precision.startswith("16") and clipping:
        return Choice(key, False, "16-mixed with gradient clipping: Lightning refuses fused optimizers there")
    return Choice(key, True, "one fused optimizer kernel per step")


def resolve_auto(cfg: Any) -> list[Choice]:
    """Replace every ``auto`` among the machine-tuned settings of a composed config by its value here (in place);
    return the choices, and log them in one line. An explicit bf16 on a CPU without native bf16 is warned about."""
    from omegaconf import OmegaConf, open_dict

    trainer, model = cfg.get("trainer"), cfg.get("model")
    if trainer is None:
        return []
    device = device_type(trainer.get("accelerator"))
    if device == "cuda" and not torch.cuda.is_available():
        return []  # nothing to resolve for: the launcher's hardware check says there is no GPU
    choices: list[Choice] = []
    with open_dict(cfg):
        if str(trainer.get("precision")) == AUTO:
            choice = resolve_precision(device)
            trainer.precision = choice.value
            choices.append(choice)
        else:
            warn_emulated_bf16(device, str(trainer.get("precision")))
        precision = str(trainer.get("precision"))
        clipping = bool(trainer.get("gradient_clip_val")) or bool(model and model.get("clip_grad_norm"))
        plain = OmegaConf.to_container(model, resolve=False) if model is not None else {}
        for key in _auto_keys(plain, "model"):
            choice = (resolve_channels_last(device, precision) if key.endswith(".channels_last")
                      else resolve_fused(precision, clipping))
            OmegaConf.update(cfg, key, choice.value, merge=False)
            choices.append(Choice(key, choice.value, choice.reason))
    if choices:
        log.info("auto settings on %s: %s", device,
                 "; ".join(f"{c.key}={_text(c.value)} ({c.reason})" for c in _merged(choices)))
    return choices


def warn_emulated_bf16(device: str, precision: str) -> None:
    if device == "cpu" and precision.startswith("bf16"):
        cpu = cpu_kind()
        if not cpu.native_bf16:
            log.warning("trainer.precision=%s on a CPU without native bf16 (%s): bf16 math is emulated there, often "
                        "~100x slower than fp32; trainer.precision=auto picks 32-true here", precision, cpu.describe())


_AUTO_KEYS = ("channels_last", "fused")


def _auto_keys(node: Any, path: str) -> list[str]:
    """Dotted keys of every ``channels_last: auto`` / ``fused: auto`` in a plain (unresolved) config container."""
    found = []
    for name, value in (node.items() if isinstance(node, dict) else ()):
        if name in _AUTO_KEYS and value == AUTO:
            found.append(f"{path}.{name}")
        elif isinstance(value, dict):
            found.extend(_auto_keys(value, f"{path}.{name}"))
    return found


def _merged(choices: list[Choice]) -> list[Choice]:
    """Several keys with one value and reason (fused of two optimizers) are logged as one."""
    groups: dict[tuple[Any, str], list[str]] = {}
    for c in choices:
        groups.setdefault((c.value, c.reason), []).append(c.key)
    return [Choice(",".join(keys), value, reason) for (value, reason), keys in groups.items()]


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
