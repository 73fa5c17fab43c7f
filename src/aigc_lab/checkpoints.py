"""Finding and reading checkpoints with errors a user can act on."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
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


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """torch.load on CPU; a truncated or foreign file becomes one clear UserError. ``mmap``: tensors are
    mapped, not read (a cheap look at a big checkpoint)."""
    try:
        # Our own checkpoints hold config objects (dataclasses, partials) beside tensors.
        blob = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:
        reason = str(err).strip().split("\n")[0].split(". ")[0]  # torch adds a paragraph of advice
        raise UserError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {reason}): the file may be truncated "
            f"(an interrupted save) or not a PyTorch checkpoint; use another one (e.g. another of the run's "
            f"checkpoints/*.ckpt)"
        ) from None
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return blob


# The key each system's on_save_checkpoint adds (systems/*.py), and what it names.
SYSTEM_KEYS = {"gan_config": "a GAN (experiment=gan_mnist)", "mlm_config": "a masked LM (experiment=mlm_*)",
               "seq2seq_config": "a seq2seq model (experiment=seq2seq_*)"}


def system_of(ckpt: dict[str, Any]) -> str | None:
    """The SYSTEM_KEYS key a checkpoint holds, or None (e.g. the MNIST classifier's)."""
    return next((key for key in SYSTEM_KEYS if key in ckpt), None)


def check_checkpoint_for(path: str | Path, system: Any, key: str = "ckpt_path") -> None:
    """Before Lightning loads ``path`` into ``system``: it must be a readable checkpoint of the same kind of
    system and network (else Lightning stops with a page of missing keys or size mismatches)."""
    if not Path(path).is_file():
        raise UserError(f"{key}={path}: no such checkpoint file")
    ckpt = load_checkpoint(path, mmap=True)
    found, expected = system_of(ckpt), getattr(system, "checkpoint_key", None)
    if found != expected:
        what = SYSTEM_KEYS.get(found, "another kind of model")
        raise UserError(f"{key}={path} is a checkpoint of {what}, not of this run's {type(system).__name__}: "
                        f"give a checkpoint of the same experiment")
    if found is not None:
        changed = net_changes(ckpt[found], system.hparams.get("net"))
        if changed:
            raise UserError(f"{key}={path} has another network than model.net here ({'; '.join(changed[:4])}): "
                            f"use the run's model.net settings (or resume from its run dir, which repeats them)")


def net_changes(saved: dict[str, Any], net: Any) -> list[str]:
    """Fields of a network config (a dataclass, or a partial of one) that differ from a checkpoint's, but
    dropout: the others change the parameters' shapes or meaning, so the weights would not fit."""
    current = asdict(net) if is_dataclass(net) else dict(getattr(net, "keywords", {}))
    return [f"model.net.{k}={v}, checkpoint {saved[k]}" for k, v in current.items()
            if k != "dropout" and k in saved and saved[k] != v]


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
