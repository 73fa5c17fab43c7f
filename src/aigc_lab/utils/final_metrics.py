"""A run's final metrics: ``metrics.json`` in the run dir (read by the sweep summary) and TensorBoard's HPARAMS."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers and one-element tensors as floats; anything else is left out."""
    scalars = {}
    for name, value in metrics.items():
        try:
            scalars[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return scalars


@rank_zero_only
def write_metrics(run_dir: Path, metrics: dict[str, float]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def log_hparams_with_metrics(loggers: Iterable[Any], record: dict[str, Any], metrics: dict[str, float],
                             step: int) -> None:
    """Write the HPARAMS entry with the final metrics (as ``final/<name>``, so the training curves keep
    their own points). Only TensorBoard has such a tab; other loggers got the record at the start."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if not metrics:
        return
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(record, metrics={f"final/{k}": v for k, v in metrics.items()}, step=step)
            logger.finalize("success")  # fit and test closed the writer already: flush this last file too
