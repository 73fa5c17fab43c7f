"""What a system is, declared once: each system file defines a ``SystemSpec`` and sets it as its class's
``spec``; the launchers, checkpoints, ``generate``, the throughput callback and the DDP helper read it (and
nothing else) to know a system. The registry maps a checkpoint back to its spec.

A new system is one system file (its LightningModule, subclassing ``System``, and its spec), one model file and
its conf files; ``register`` makes it known to checkpoints and ``generate`` (the README's "Add a system").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L

from aigc_lab.systems.guards import NonFiniteLossGuard

# The systems that ship with the package: imported on a registry lookup, so each registers its spec.
BUILTIN_MODULES = ("aigc_lab.systems.gan", "aigc_lab.systems.mlm", "aigc_lab.systems.seq2seq",
                   "aigc_lab.systems.classifier")
SYSTEM_KEY = "aigc_system"  # a checkpoint's ``module:Class`` of the system that saved it


@dataclass(frozen=True)
class SystemSpec:
    """``name``: short name (``gan``); ``describes``: how messages name its checkpoints (``a GAN
    (experiment=gan_mnist)``); ``data_option``: the conf/data option it trains on; ``net_config``: its network's
    config dataclass, saved in checkpoints under ``checkpoint_key`` (None: a system whose checkpoints carry no
    network config); ``inference``: ``module:function`` that ``generate`` calls as ``function(cfg, ckpt, path)``
    (its options in conf/generate.yaml; it loads the network with the system's own loader, e.g.
    ``TokenSystem.load_for_inference``); ``export``: format -> ``module:function`` that ``python -m
    aigc_lab.export`` calls as ``function(cfg, ckpt, out)`` (its options in conf/export.yaml); ``prepare``:
    ``module:function`` of a prerequisite stage that the launchers (train, eval) run with the composed config before
    the system's data is read (``function(cfg)``, e.g. the GAN's FID classifier); ``ddp_find_unused_parameters``:
    DDP must search for parameters a backward pass does not reach; ``clip_option``: how it clips gradients (for
    messages); ``count_samples``/``count_tokens``: a batch's samples and tokens (None: no tokens); ``train_flops``:
    a batch's training FLOPs (None: not counted), ``flops_vary``: False when every batch has the same FLOPs (counted
    once)."""

    name: str
    describes: str
    data_option: str
    net_config: type | None = None
    checkpoint_key: str | None = None
    inference: str | None = None
    export: Mapping[str, str] = field(default_factory=dict)
    prepare: str | None = None
    ddp_find_unused_parameters: bool = False
    clip_option: str = "trainer.gradient_clip_val=1.0"
    count_samples: Callable[[Any], int] = lambda batch: len(batch[0])
    count_tokens: Callable[[Any, Any], int] | None = None  # (system, batch)
    train_flops: Callable[[Any, Any], int | None] | None = None  # (system, batch)
    flops_vary: bool = True

    def inference_entry(self) -> Callable[..., Any] | None:
        """The ``inference`` function, imported (None: the system has none)."""
        return _imported(self.inference)

    def exporter(self, fmt: str) -> Callable[..., Any]:
        """The ``export`` function of format ``fmt``, imported."""
        return _imported(self.export[fmt])

    def run_prepare(self, cfg: Any) -> None:
        """The ``prepare`` stage, when the system has one."""
        stage = _imported(self.prepare)
        if stage is not None:
            stage(cfg)


def _imported(target: str | None) -> Any:
    if target is None:
        return None
    module, _, name = target.partition(":")
    found: Any = importlib.import_module(module)
    for part in name.split("."):  # a function, or a class's method (``MLMSystem.load_for_inference``)
        found = getattr(found, part)
    return found


def sub_state_dict(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of one sub-module of a checkpoint's ``state_dict`` (``model.``), without the prefix."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


class System(NonFiniteLossGuard, L.LightningModule):
    """The base of every system: its ``spec``, the size checks the launchers make before any data is read, and
    the mark its checkpoints carry."""

    spec: ClassVar[SystemSpec]

    def check_bounds(self, datamodule: Any) -> None:
        """Refuse (UserError) sizes of ``datamodule`` that this system's model cannot take."""

    def memory_needs(self, datamodule: Any, stage: str = "fit") -> list[Any]:
        """The memory ``stage`` needs, as ``utils.memory.Need``s (none: not checked)."""
        return []

    def check_sizes(self, datamodule: Any, trainer: Mapping[str, Any] | None = None, stage: str = "fit") -> None:
        """Its sizes against the model (``check_bounds``) and this machine (``memory_needs`` against the memory
        ``trainer`` gives a process), before any data is read: ``train``, a resume's pre-check and ``eval``
        (``stage="test"``) call it. Raises ConfigError or ResourceError, one line each."""
        from aigc_lab.utils.memory import check_memory, memory_limit

        self.check_bounds(datamodule)
        check_memory(self.memory_needs(datamodule, stage), memory_limit(trainer))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[SYSTEM_KEY] = f"{type(self).__module__}:{type(self).__qualname__}"


# ---------------------------------------------------------------------------- the registry
_SPECS: dict[str, SystemSpec] = {}


def register(spec: SystemSpec) -> SystemSpec:
    """Make ``spec`` known (by its name); a system file calls it when it defines its spec."""
    _SPECS[spec.name] = spec
    return spec


def registered() -> list[SystemSpec]:
    """Every known spec, the built-in systems' included."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return list(_SPECS.values())


def spec_of(system: Any) -> SystemSpec | None:
    """The spec of a system (instance or class), or None for a LightningModule of another kind."""
    return getattr(system, "spec", None)


def spec_of_checkpoint(ckpt: dict[str, Any]) -> SystemSpec | None:
    """The spec of the system that saved ``ckpt``: the class its ``aigc_system`` names, else the registered
    spec whose checkpoint key it holds (checkpoints of older versions); None when neither says."""
    saved = ckpt.get(SYSTEM_KEY)
    if isinstance(saved, str) and ":" in saved:
        module, _, name = saved.partition(":")
        try:
            cls: Any = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
            spec = spec_of(cls)
            if spec is not None:
                return spec
        except (ImportError, AttributeError):
            pass  # a class that moved or is not installed here: recognized by its keys below
    return next((s for s in registered() if s.checkpoint_key is not None and s.checkpoint_key in ckpt), None)
