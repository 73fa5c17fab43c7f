"""Search spaces from Hydra sweep overrides: ``interval``, ``tag(log|int, ...)``, ``choice``/``a,b``, ``range``.

The leading underscore keeps Hydra's plugin scanner from importing this module (and optuna) at every
start-up; the sweeper imports it when a sweep begins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.aigc_lab_sweeper._errors import SweepError


@dataclass
class SearchSpace:
    """What optuna samples (``distributions``) and what every trial gets as is (``fixed`` overrides)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    # choice values as override text, by parameter: a choice's own spelling goes back on the command line
    labels: dict[str, list[str]] = field(default_factory=dict)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """The command-line overrides of one trial."""
        return self.fixed + [f"{key}={self.format(key, value)}" for key, value in params.items()]

    def format(self, key: str, value: Any) -> str:
        dist = self.distributions[key]
        if isinstance(dist, CategoricalDistribution):
            # match on type too: True == 1 would pick the wrong label
            index = next(i for i, c in enumerate(dist.choices) if type(c) is type(value) and c == value)
            return self.labels[key][index]
        return repr(value)  # int or float: repr round-trips and Hydra parses it back to the same number


def search_space(overrides: Iterable[Override]) -> SearchSpace:
    """Sweeps become distributions, plain values fixed overrides; a later override of a key replaces an
    earlier one, so a command-line ``key=value`` pins a parameter of the configured search space."""
    latest = {override.get_key_element(): override for override in overrides}
    space = SearchSpace()
    for key, override in latest.items():
        if not override.is_sweep_override():
            space.fixed.append(f"{key}={override.get_value_element_as_str()}")
        elif override.is_interval_sweep():
            space.distributions[key] = _checked(key, override, _interval)
        elif override.is_range_sweep():
            space.distributions[key] = _checked(key, override, _range)
        else:
            elements = list(override.sweep_iterator())
            space.distributions[key] = CategoricalDistribution([Transformer.encode(e) for e in elements])
            space.labels[key] = [Transformer.str(e) for e in elements]
    return space


def _checked(key: str, override: Override, build: Callable[[Any], BaseDistribution]) -> BaseDistribution:
    """``build(sweep)``, its errors (optuna's included) as one SweepError that names the parameter and the fix."""
    text = f"{key}={override.get_value_string()}"  # as typed
    _check_log_bound(key, override.value(), text)
    try:
        return build(override.value())
    except ValueError as err:
        raise SweepError(f"{text}: {err}") from None


def _check_log_bound(key: str, sweep: IntervalSweep | RangeSweep, text: str) -> None:
    """A log scale needs a lower bound above 0 (at least 1 for integers); optuna's own error is a traceback."""
    if "log" not in sweep.tags:
        return
    if isinstance(sweep, IntervalSweep):
        low, high, integer = min(sweep.start, sweep.end), max(sweep.start, sweep.end), "int" in sweep.tags
    else:
        values = list(sweep.range())
        if not values:
            return  # _range names the empty range
        low, high, integer = min(values), max(values), all(isinstance(v, int) for v in values)
    if integer and low < 1:
        raise SweepError(f"{text}: a log scale of integers needs a lower bound >= 1, got {int(low)}. Fix: start it "
                         f"at 1 or more, e.g. {key}=tag(log, int, interval(1, {int(high)})), or drop the log tag")
    if not integer and low <= 0:
        example = f", e.g. {key}=tag(log, interval({high / 1000:g}, {high:g}))" if high > 0 else ""
        raise SweepError(f"{text}: a log scale needs a lower bound > 0, got {low}. Fix: start it above 0{example}, "
                         f"or drop the log tag")


def _interval(sweep: IntervalSweep) -> BaseDistribution:
    log = "log" in sweep.tags
    if "int" in sweep.tags:
        return IntDistribution(int(sweep.start), int(sweep.end), log=log)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log)


def _range(sweep: RangeSweep) -> BaseDistribution:
    """Hydra's range stops before ``stop``, like Python's; optuna's bounds are inclusive."""
    values = list(sweep.range())
    if not values:
        raise SweepError(f"empty range({sweep.start}, {sweep.stop}, {sweep.step})")
    log = "log" in sweep.tags
    if all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values), step=abs(int(sweep.step)), log=log)
    return FloatDistribution(min(values), max(values), step=abs(float(sweep.step)), log=log)
