"""Finding and reading checkpoints with errors a user can act on.

One rule maps a run dir to a checkpoint, for every command that takes ``ckpt_path=<run dir>``:

- to go on training (a resume) it is ``checkpoints/last.ckpt``, the latest state (``last_checkpoint``);
- to use the model (``eval``, ``generate``) it is the best checkpoint as the run's checkpointing recorded it
  (its monitor, e.g. ``val/fid``), else ``last.ckpt`` when the run kept no best (``best_checkpoint``).

A ``.ckpt`` file is taken as it is by all of them.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from aigc_lab.errors import UserError
from aigc_lab.systems.spec import SystemSpec, spec_of, spec_of_checkpoint


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint to use a model from: a ``.ckpt`` file as is; for a run dir, ``best_checkpoint``."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise UserError(f"checkpoint not found: {path} (give a .ckpt file or a run dir under outputs/)")
    return best_checkpoint(path)


def best_checkpoint(run_dir: str | Path) -> Path:
    """A run dir's best checkpoint (as recorded in its last.ckpt), else its ``last_checkpoint``."""
    last = last_checkpoint(run_dir)
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


def describe(spec: SystemSpec | None) -> str:
    """How messages name a system's checkpoints: ``a GAN (experiment=gan_mnist)``."""
    return spec.describes if spec is not None else "another kind of model"


def check_checkpoint_for(path: str | Path, system: Any, key: str = "ckpt_path") -> None:
    """Before Lightning loads ``path`` into ``system``: it must be a readable checkpoint of the same kind of
    system and network (else Lightning stops with a page of missing keys or size mismatches)."""
    if not Path(path).is_file():
        raise UserError(f"{key}={path}: no such checkpoint file")
    ckpt = load_checkpoint(path, mmap=True)
    found, expected = spec_of_checkpoint(ckpt), spec_of(system)
    unmarked = found is None and (expected is None or expected.checkpoint_key is None)  # e.g. the classifier's
    if not unmarked and (found is None or expected is None or found.name != expected.name):
        raise UserError(f"{key}={path} is a checkpoint of {describe(found)}, not of this run's "
                        f"{type(system).__name__}: give a checkpoint of the same experiment")
    if found is not None and found.checkpoint_key in ckpt:
        changed = net_changes(ckpt[found.checkpoint_key], system.hparams.get("net"))
        if changed:
            raise UserError(f"{key}={path} has another network than model.net here ({'; '.join(changed[:4])}): "
                            f"use the run's model.net settings (or resume from its run dir, which repeats them)")


def net_changes(saved: dict[str, Any], net: Any) -> list[str]:
    """Fields of a network config (a dataclass, or a partial of one) that differ from a checkpoint's, but
    dropout: the others change the parameters' shapes or meaning, so the weights would not fit."""
    current = asdict(net) if is_dataclass(net) else dict(getattr(net, "keywords", {}))
    return [f"model.net.{k}={v}, checkpoint {saved[k]}" for k, v in current.items()
            if k != "dropout" and k in saved and saved[k] != v]
