"""Fail early on typos: every key of a ``_target_`` node must be a parameter of its target, and
simple values must match the parameter's type hint (``trainer.max_epochs=abc`` is refused); the launcher's own
top-level keys (``seed``, ``train``, ...) must have their kind of value (``seed=abc`` is refused).

Hydra already refuses command-line overrides of unknown keys (struct mode); this also covers keys
written into config files and values of the wrong type, before any data is read.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, InterpolationResolutionError

from aigc_lab.errors import ConfigError

_HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
# Settings whose value may be `auto`: resolved for the machine at launch (utils/hardware.py), so valid in a config
# whatever the target's type hint says.
_AUTO_KEYS = {"precision", "channels_last", "fused"}
# The launcher's top-level keys (conf/train.yaml): the type each accepts, and how a message names it.
_TOP_LEVEL: dict[str, tuple[Any, str]] = {
    "seed": (int | None, "an integer or null (e.g. seed=42)"),
    "train": (bool, "true or false"),
    "test": (bool, "true or false"),
    "print_config": (bool, "true or false"),
    "ckpt_path": (str | None, "a checkpoint path or null"),
    "optimized_metric": (str | None, "a metric name (e.g. val/loss) or null"),
}


def check_targets(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first unknown key or mistyped value under a ``_target_`` node."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        # A missing key is most often groups that do not fit: model=seq2seq with data=text lacks ${data.max_len}
        hint = " (do the groups fit together, e.g. model= and data=?)" if isinstance(err, InterpolationKeyError) else ""
        raise ConfigError(f"{err.full_key}: {err.msg}{hint}") from None
    check_top_level(resolved)
    _walk(resolved, prefix="")


def check_top_level(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first top-level launcher key (``seed``, ``train``, ...) of the wrong kind."""
    for key, (annotation, accepted) in _TOP_LEVEL.items():
        if key in cfg and _matches(cfg[key], annotation) is False:
            value = cfg[key]
            raise ConfigError(f"{key}: expected {accepted}, got {value!r} ({type(value).__name__})")


def _walk(node: Any, prefix: str) -> None:
    if isinstance(node, Mapping):
        if "_target_" in node:
            _check_node(node, prefix)
        for key, value in node.items():
            _walk(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, f"{prefix}{i}.")


def _check_node(node: Mapping, prefix: str) -> None:
    where = prefix.rstrip(".") or "<root>"
    try:
        target = get_object(node["_target_"])
    except Exception as err:
        raise ConfigError(f"{where}._target_: cannot import {node['_target_']!r} ({err})") from None
    params = _signature(target)
    if params is None:
        return
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in node.items():
        if key in _HYDRA_KEYS:
            continue
        if key not in params:
            if takes_kwargs:
                continue
            known = ", ".join(k for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
            raise ConfigError(f"{prefix}{key}: unknown key for {node['_target_']} (known keys: {known})")
        annotation = params[key].annotation
        if isinstance(value, Mapping) and "_target_" in value:
            continue  # instantiated to an object: its own keys are checked on its node
        if key in _AUTO_KEYS and value == "auto":
            continue
        if _matches(value, annotation) is False:
            raise ConfigError(
                f"{prefix}{key}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})"
            )


def _signature(target: Any) -> Mapping[str, inspect.Parameter] | None:
    for eval_str in (True, False):
        try:
            return inspect.signature(target, eval_str=eval_str).parameters
        except (NameError, TypeError, ValueError, SyntaxError, AttributeError):
            continue
    return None


def _matches(value: Any, annotation: Any) -> bool | None:
    """True/False when the hint is understood, None when it is not (then nothing is checked)."""
    if annotation in (inspect.Parameter.empty, Any) or isinstance(annotation, str):
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        answers = [_matches(value, arg) for arg in typing.get_args(annotation)]
        return True if True in answers else (None if None in answers else False)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    container = origin or annotation
    if container in (list, tuple, Sequence, typing.Sequence):
        return isinstance(value, (list, tuple))
    if container in (dict, Mapping, typing.Mapping):
        return isinstance(value, Mapping)
    return None


def _type_name(annotation: Any) -> str:
    """``int | None`` -> "int or None"; Literal values are listed (``trainer.precision``: "one of 64, 32, ...")."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Literal):
        args = _flat_args(annotation)
        values = [repr(a) for a in args if not isinstance(a, type) and typing.get_origin(a) is None]
        kinds = [_type_name(a) for a in args if isinstance(a, type) or typing.get_origin(a) is not None]
        return " or ".join(([f"one of {', '.join(values)}"] if values else []) + kinds)
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _flat_args(annotation: Any) -> list[Any]:
    """The members of nested unions and Literals, in order: Literal values and the other types."""
    out = []
    for arg in typing.get_args(annotation):
        nested = typing.get_origin(arg) in (typing.Union, types.UnionType, typing.Literal)
        out += _flat_args(arg) if nested else [arg]
    return out
