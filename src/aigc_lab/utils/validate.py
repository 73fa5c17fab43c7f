"""Range checks of config values, called from the constructors of systems and datamodules, so that a bad
value stops the run before any data is read, with the config key and its allowed range named:
``model.lr must be positive, got -0.001``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aigc_lab.errors import ConfigError


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise ``ConfigError("<key> must be <rule>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def positive(key: str, value: float | None, optional: bool = False) -> None:
    """``value > 0`` (or None, when ``optional``)."""
    if not (optional and value is None):
        require(value is not None and value > 0, key, value, "positive" + (" or null" if optional else ""))


def at_least(key: str, value: float, low: float) -> None:
    require(value >= low, key, value, f">= {low}")


def at_most(key: str, value: float, high: float, why: str = "") -> None:
    """``value <= high``; ``why`` says where the bound comes from: ``data.vocab_size must be <= 2147483647
    (token ids are int32), got ...``."""
    require(value <= high, key, value, f"<= {high}" + (f" ({why})" if why else ""))


def in_interval(key: str, value: float | None, low: float, high: float, bounds: str = "[]",
                optional: bool = False) -> None:
    """``value`` in the interval written by ``bounds``: ``"()"`` open, ``"[]"`` closed, ``"[)"``, ``"(]"``."""
    if optional and value is None:
        return
    above = value is not None and (value > low if bounds[0] == "(" else value >= low)
    below = value is not None and (value < high if bounds[1] == ")" else value <= high)
    rule = f"in {bounds[0]}{low}, {high}{bounds[1]}" + (" or null" if optional else "")
    require(above and below, key, value, rule)


def one_of(key: str, value: Any, options: Collection[Any]) -> None:
    require(value in options, key, value, "one of " + ", ".join(map(str, options)))


def optimizer_lr(key: str, optimizer: Any) -> None:
    """The ``lr`` of an optimizer partial (``model.optimizer.lr``), when it sets one, must be positive."""
    lr = getattr(optimizer, "keywords", {}).get("lr")
    if lr is not None:
        positive(f"{key}.lr", lr)


def net_config(key: str, build: Any, **fill: Any) -> None:
    """Build a network config (a dataclass partial, completed with ``fill``) to run its own checks now,
    before any data work; its ValueError becomes a ConfigError that names ``key`` (``model.net``)."""
    try:
        build(**fill)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{key}: {err}") from None
