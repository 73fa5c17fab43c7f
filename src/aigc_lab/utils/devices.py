"""``trainer.accelerator``, ``trainer.devices`` and ``trainer.precision`` checked against this machine before
Lightning builds the Trainer: Lightning's own errors for these are long (it lists every device id) or
missing (``16-mixed`` on a CPU silently runs as ``bf16-mixed``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from aigc_lab.errors import ConfigError

ALIASES = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}  # Lightning's short forms
# What runs on a CPU as asked: fp16 autocast does not exist there, Transformer Engine is NVIDIA-only.
CPU_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true", "64-true")
LIGHTNING_PRECISIONS = (*CPU_PRECISIONS, "16-mixed", "transformer-engine", "transformer-engine-float16")


def check_trainer_hardware(trainer: Mapping[str, Any]) -> None:
    """Raise ConfigError when the trainer config asks for GPUs this machine lacks or a precision its
    device cannot run; the message names the key and the values that work here."""
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    gpus = torch.cuda.device_count()
    if accelerator in ("gpu", "cuda"):
        check_gpu_devices(trainer.get("devices", "auto"), gpus, accelerator)
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and gpus == 0 and not torch.backends.mps.is_available())
    if on_cpu:
        check_cpu_devices(trainer.get("devices", "auto"))
    precision = trainer.get("precision")
    if precision is None or str(precision) == "auto":
        return  # utils.hardware.resolve_auto picks one this device runs
    precision = ALIASES.get(str(precision), str(precision))
    on_gpu = gpus > 0 and accelerator in ("gpu", "cuda", "auto")
    if on_cpu and precision in LIGHTNING_PRECISIONS and precision not in CPU_PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer.get('precision')} cannot run on a CPU: use bf16-mixed "
                          f"or 32-true (auto picks the faster here; or run on a GPU with trainer.accelerator=gpu)")
    if on_gpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name(0)}) has no "
                          f"bfloat16 support: use 16-mixed or 32-true")


def check_gpu_devices(devices: Any, available: int, accelerator: str = "gpu") -> None:
    """``trainer.devices`` (a count, or a list of GPU ids) against the ``available`` CUDA GPUs."""
    if available == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible here: use "
                          f"trainer.accelerator=cpu (or auto), or run on a machine with a GPU")
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        ids = [int(i) for i in devices]
        if ids and max(ids) >= available:
            raise ConfigError(f"trainer.devices={ids} names GPU {max(ids)}, but the visible GPUs are "
                              f"0..{available - 1}: use ids below {available} (or a count, e.g. trainer.devices=1)")
        return
    count = int(devices) if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()) else None
    if count is not None and count > available:
        raise ConfigError(f"trainer.devices={devices} but {available} GPU(s) are visible: set trainer.devices "
                          f"to at most {available} (or -1 for all of them)")


def check_cpu_devices(devices: Any) -> None:
    """On a CPU each device is a process (DDP over gloo): more of them than this machine's cores is a typo
    (``trainer.devices=999`` would start 999 processes), not a run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = int(devices) if isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()) else None
    if count is not None and count > cores:
        raise ConfigError(f"trainer.devices={devices} on a CPU would start {count} processes, but this machine has "
                          f"{cores} cores: set trainer.devices to at most {cores} (or use a GPU machine)")


def instantiate_trainer(trainer: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of the trainer config; Lightning's MisconfigurationException (a trainer
    setting this machine or Lightning refuses) becomes a short ConfigError instead of a traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(trainer, **kwargs)
    except InstantiationException as err:
        if not isinstance(err.__cause__, MisconfigurationException):
            raise
        lines = [line.strip() for line in str(err.__cause__).strip().splitlines() if line.strip()]
        message = " ".join(lines[:2])[:400]
        raise ConfigError(f"trainer: {message} (check trainer.accelerator, devices, strategy and precision)") from err
