"""What a run prints and records: the config tree, the failure marker, the provenance of the run.

A run dir holds one record per launch (a resume is a later launch into the same folder, see ``aigc_lab.resume``):
launch 0 writes ``config_tree.log`` and Hydra writes its ``.hydra/``; launch n > 0 writes ``config_tree.<n>.log``
and ``.hydra.<n>/`` beside them, which stay as they were. ``provenance.json`` holds one entry per launch, and
its count before a launch is that launch's number."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

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


def process_line() -> str:
    """The second line of ``STATUS`` while this process runs the run."""
    pid = os.getpid()
    start = start_ticks(pid)
    since = datetime.now().astimezone().isoformat(timespec="seconds")
    return f"pid={pid} host={platform.node()} start={'-' if start is None else start} since={since}"


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None without ``/proc`` or without the process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so the fields after the last ")"
    # start at field 3; starttime is field 22.
    return int(stat.rsplit(")", 1)[1].split()[19])


_CURRENT_RUN: list[Path] = []  # the run dir this process last marked running (rank zero)


@rank_zero_only
def mark_run(run_dir: Path, status: str, detail: str = "") -> None:
    """Write ``<run_dir>/STATUS`` (``running``/``done``/``failed``/``interrupted``/``killed``, then a detail line)
    so a dead run is never a result. ``running`` names this process on its second line (``utils/stale_runs.py``:
    a later launch marks the run ``killed`` once that process is gone). A run dir removed during the run stays
    removed (nothing to mark; recreating it would leave a folder that holds only a STATUS file)."""
    if status == "running":
        run_dir.mkdir(parents=True, exist_ok=True)
        detail = detail or process_line()
        _CURRENT_RUN[:] = [Path(run_dir)]
    elif not run_dir.is_dir():
        return
    (run_dir / "STATUS").write_text(f"{status}\n{detail}\n" if detail else f"{status}\n")


def current_run() -> Path | None:
    """The run dir this process marked ``running`` last (rank zero; None on other ranks and outside a run)."""
    return _CURRENT_RUN[0] if _CURRENT_RUN else None


PROVENANCE = "provenance.json"
PACKAGES = ("torch", "lightning", "hydra-core", "omegaconf", "torchmetrics", "torchvision", "tokenizers", "numpy")


@rank_zero_only
def write_provenance(run_dir: Path, cfg: DictConfig, auto: Sequence[Any] = ()) -> dict[str, Any]:
    """Record what made the run in ``<run_dir>/provenance.json``: one entry per launch (a resumed run adds
    one) with the command line, git commit, package versions, device and precision. A dirty work tree's
    ``git diff HEAD`` is saved beside it as ``git_diff.patch`` (``git_diff.<n>.patch`` for launch n > 0).
    ``auto``: the ``auto`` settings resolved for this machine (``utils.hardware.Choice``): key, value, reason.
    The config as composed is Hydra's ``.hydra/config.yaml`` (``.hydra.<n>/`` for launch n > 0);
    ``config_tree.log`` (``config_tree.<n>.log``) shows it with ``auto`` resolved."""
    path = run_dir / PROVENANCE
    launches = recorded_launches(run_dir)
    record = launch_record(cfg)
    record["auto"] = {c.key: {"value": c.value, "reason": c.reason} for c in auto}
    git = git_state(Path(__file__).resolve().parent)  # the tree this code runs from, not the cwd
    diff = git.pop("diff", None)
    if diff:
        git["diff_file"] = launch_file("git_diff.patch", len(launches))
        (run_dir / git["diff_file"]).write_text(diff)
    record["git"] = git
    launches.append(record)
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"launches": launches}, indent=2, default=str) + "\n")
    return record


def recorded_launches(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of ``<run_dir>/provenance.json``, one per launch so far (none for a new run dir)."""
    path = run_dir / PROVENANCE
    return json.loads(path.read_text()).get("launches", []) if path.is_file() else []


def launch_number(run_dir: Path) -> int:
    """The number of the launch about to start in ``run_dir``: 0 for a new run, n for its n-th resume."""
    return len(recorded_launches(run_dir))


def launch_file(name: str, launch: int) -> str:
    """The name of a per-launch file: ``name`` for launch 0, else the launch number before the suffix
    (``config_tree.log`` -> ``config_tree.2.log``)."""
    if launch == 0:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}.{launch}{dot}{suffix}"


@rank_zero_only
def save_launch_config(run_dir: Path, launch: int, config_yaml: str) -> Path | None:
    """Write ``<run_dir>/.hydra.<launch>/`` (the files Hydra writes into ``.hydra/``) for a later launch that
    told Hydra to write none (``hydra.output_subdir=null``, added by the resume): the first launch's ``.hydra/``
    stays. ``config_yaml``: the task config as composed. Returns the folder, or None when there is nothing to
    write (a first launch, or Hydra wrote its own)."""
    from hydra.core.hydra_config import HydraConfig

    if launch == 0 or not HydraConfig.initialized() or HydraConfig.get().output_subdir is not None:
        return None
    folder = run_dir / f".hydra.{launch}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_yaml)
    OmegaConf.save(HydraConfig.instance().cfg, folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(HydraConfig.get().overrides.task)), folder / "overrides.yaml")
    return folder


def launch_record(cfg: DictConfig) -> dict[str, Any]:
    return {
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", sys.argv)),  # as typed, before resume.py's rewrite
        "argv": list(sys.argv),  # as Hydra parsed it
        "overrides": _hydra_overrides(),
        "cwd": os.getcwd(),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
        "device": device_info(cfg),
    }


def git_state(where: Path) -> dict[str, Any]:
    """commit, branch, dirty flag, untracked files and ``git diff HEAD`` of the repo holding ``where``;
    ``{"commit": None}`` outside a git work tree or without git."""
    commit = _git(where, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    status = _git(where, "status", "--porcelain") or ""
    lines = status.splitlines()
    return {
        "commit": commit,
        "branch": _git(where, "rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": any(not line.startswith("??") for line in lines),
        "untracked": [line[3:] for line in lines if line.startswith("??")],
        "diff": _git(where, "diff", "HEAD", strip=False),
    }


def device_info(cfg: DictConfig) -> dict[str, Any]:
    """What the trainer was asked for (accelerator, devices, strategy, precision) and what the machine has."""
    import torch

    from aigc_lab.utils.hardware import cpu_kind

    trainer = cfg.get("trainer") or {}
    info: dict[str, Any] = {key: _plain(trainer.get(key)) for key in
                            ("accelerator", "devices", "num_nodes", "strategy", "precision")}
    info.update(cpu=cpu_kind().as_dict(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def _git(where: Path, *args: str, strip: bool = True) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() if strip else out.stdout


def _hydra_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
