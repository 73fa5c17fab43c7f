"""Finding and reading checkpoints with errors a user can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from aigc_lab.errors import UserError


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file as is; for a run dir, its best checkpoint (as recorded in last.ckpt), else last.ckpt."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} (give a .ckpt file or a run dir under outputs/)")
    last = last_checkpoint(path)
    if last.name == "last.ckpt":
        best = _best_from(last)
        return best if best is not None else last
    return last


def last_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint to resume a run dir from: ``checkpoints/last.ckpt``, else its newest ``.ckpt``."""
    ckpt_dir = Path(run_dir).expanduser() / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        return last
    found = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no checkpoints in {ckpt_dir}: is {run_dir} a run dir that saved one?")
    return found[-1]


def _best_from(last: Path) -> Path | None:
    for state in load_checkpoint(last).get("callbacks", {}).values():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best and Path(best).name == last.name:
            continue  # the callback that writes last.ckpt: its "best" is the latest
        if best and Path(best).is_file():
            return Path(best)
        if best and (last.parent / Path(best).name).is_file():  # the run dir was moved
            return last.parent / Path(best).name
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load on CPU; a truncated or foreign file becomes one clear UserError."""
    try:
        # Our own checkpoints hold config objects (dataclasses, partials) beside tensors.
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {err}. The file may be truncated "
            f"(an interrupted save) or not a PyTorch checkpoint; use another one, e.g. last.ckpt."
        ) from None
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return blob


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
