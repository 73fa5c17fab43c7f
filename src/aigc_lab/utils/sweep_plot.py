"""``summary.png`` of a sweep: the optimized metric against each swept parameter, one panel per parameter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

# Agg through the object API, not pyplot: no GUI backend, no global state, safe in any process
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_sweep(path: Path, names: list[str], params: list[dict[str, str]], values: list[float], keys: list[str],
               metric: str | None) -> None:
    """Jobs ``names`` with their swept ``params`` and metric ``values`` (NaN: none), against each of ``keys`` (the
    job names when there are none)."""
    keys = keys or ["job"]
    cols = min(len(keys), 4)  # wrap many parameters into rows of 4 panels
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        labels = [name if key == "job" else job_params.get(key, "") for name, job_params in zip(names, params)]
        draw_panel(ax, labels, values)
        ax.set_xlabel(key)
        ax.set_ylabel(metric or "optimized_metric")
    failed = sum(math.isnan(v) for v in values)
    fig.suptitle(f"{len(names)} jobs" + (f", {failed} without a value (red x)" if failed else ""))
    fig.savefig(path, dpi=100)


def draw_panel(ax: Axes, labels: list[str], values: list[float]) -> None:
    """Numbers on a numeric axis (log when positive and spread over > 1.5 decades), other values as categories."""
    xs = [n for n in map(_number, labels) if n is not None]
    if len(xs) == len(labels):
        if min(xs) > 0 and max(xs) / min(xs) > 30:
            ax.set_xscale("log")
    else:
        categories = sorted(set(labels))
        xs = [float(categories.index(label)) for label in labels]
        ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ok = [(x, v) for x, v in zip(xs, values) if not math.isnan(v)]
    if ok:
        ax.scatter(*zip(*ok), color="tab:blue")
    bad = [x for x, v in zip(xs, values) if math.isnan(v)]
    if bad:  # failed trials along the bottom edge, where they cannot be mistaken for a value
        ax.scatter(bad, [0.03] * len(bad), marker="x", color="tab:red", transform=ax.get_xaxis_transform())
        ax.update_datalim([(x, 0.0) for x in bad], updatey=False)  # the blended transform leaves x limits alone
        ax.autoscale_view()
    ax.grid(alpha=0.3)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
