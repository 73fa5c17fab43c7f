"""What a run prints and records: the config tree, the failure marker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

PRINT_ORDER = ("data", "model", "callbacks", "logger", "trainer", "paths", "extras")


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: Path | None = None, order: Sequence[str] = PRINT_ORDER) -> None:
    """Print the resolved config as a rich tree (one branch per group) and save it as text."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    fields = [f for f in order if f in cfg] + [f for f in cfg if f not in order]
    for field in fields:
        branch = tree.add(field, style="bold", guide_style="dim")
        value = cfg[field]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to is not None:
        with open(save_to, "w") as f:
            rich.print(tree, file=f)


@rank_zero_only
def mark_run(run_dir: Path, status: str, detail: str = "") -> None:
    """Write ``<run_dir>/STATUS`` (``running``/``done``/``failed: ...``) so a dead run is never a result."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "STATUS").write_text(f"{status}\n{detail}\n" if detail else f"{status}\n")
