"""Runs whose process is gone: a run killed by ``kill -9``, the out-of-memory killer or a crash of the
interpreter never gets to mark its run dir, whose ``STATUS`` would say ``running`` forever.

While a run runs, the second line of its ``STATUS`` names its process (``mark_run`` writes it)::

    running
    pid=4242 host=node17 start=8812345 since=2026-05-09T10:00:00+02:00

``start``: the process start time (field 22 of ``/proc/<pid>/stat``, clock ticks after boot), so that a later
process that got the same pid is not taken for the run's. A launch that touches a run dir (a resume into it,
``eval`` or ``generate`` from it, a sweep summary reading it) or starts a run beside it (the other run dirs
of the same task, the other jobs of a sweep) first marks such a run ``killed`` when that process is gone
from this host, with the pid, the run dir's last write and how to go on. A run of another host is left
alone (its process cannot be seen from here), and so is a ``STATUS`` without the process line (an older run).
"""

from __future__ import annotations

import logging
import os
import platform
from datetime import datetime
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from aigc_lab.utils.run_info import mark_run, process_line, start_ticks  # noqa: F401 (process_line: tests)

log = logging.getLogger("aigc_lab")


def parse_process(line: str) -> dict[str, str] | None:
    """``key=value`` fields of a process line; None for any other line (an older run's, a detail)."""
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    return fields if fields.get("pid", "").isdigit() and fields.get("host") else None


def process_gone(fields: dict[str, str]) -> bool:
    """True when the process of a ``parse_process`` record is gone from this host; False while it runs, and for
    a process of another host (it cannot be seen from here)."""
    if fields["host"] != platform.node():
        return False
    pid = int(fields["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # a process of another user holds the pid: compared by start time below
    if _is_zombie(pid):
        return True  # dead, waiting for its parent to read its exit code
    start = start_ticks(pid)
    recorded = fields.get("start", "-")
    return start is not None and recorded.isdigit() and start != int(recorded)  # the pid was reused


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@rank_zero_only
def mark_if_killed(run_dir: Path) -> bool:
    """Mark ``run_dir`` ``killed`` if its ``STATUS`` says ``running`` and its process is gone from this host;
    True when it did (rank zero only: None elsewhere)."""
    status = Path(run_dir) / "STATUS"
    try:
        text = status.read_text()
    except OSError:
        return False
    lines = text.splitlines()
    fields = parse_process(lines[1]) if len(lines) > 1 and lines[0].strip() == "running" else None
    if fields is None or not process_gone(fields):
        return False
    detail = killed_detail(Path(run_dir), fields)
    try:
        if status.read_text() != text:
            return False  # a new launch took the run dir meanwhile
    except OSError:
        return False
    mark_run(Path(run_dir), "killed", detail)
    log.warning("Marked %s killed: %s", run_dir, detail)
    return True


def mark_killed_beside(run_dir: Path) -> list[Path]:
    """``mark_if_killed`` on every run dir beside ``run_dir`` (the runs of its task, the jobs of its sweep);
    the ones it marked."""
    parent = Path(run_dir).parent
    if not parent.is_dir():
        return []
    return [status.parent for status in sorted(parent.glob("*/STATUS")) if mark_if_killed(status.parent)]


def killed_detail(run_dir: Path, fields: dict[str, str]) -> str:
    """The second line of a ``killed`` STATUS: which process, its last sign of life, how to go on."""
    last = last_write(run_dir)
    seen = f"the run dir's last write: {last[1]} at {last[0]}" if last else "nothing written in the run dir"
    now = datetime.now().astimezone().isoformat(timespec="seconds")
    if any((run_dir / "checkpoints").glob("*.ckpt")):
        hint = f"resume from its last checkpoint with: python -m aigc_lab ckpt_path={run_dir}"
    else:
        hint = "no checkpoint was saved: start the run again"
    return (f"its process (pid {fields['pid']} on {fields['host']}, running since {fields.get('since', '?')}) "
            f"ended without a word (kill -9, out of memory, a crash); {seen}; found gone at {now} by pid "
            f"{os.getpid()}; {hint}")


def last_write(run_dir: Path) -> tuple[str, str] | None:
    """(time, file) of the newest file in ``run_dir`` other than STATUS, or None."""
    newest: tuple[float, Path] | None = None
    for path in run_dir.rglob("*"):
        try:
            if path.name == "STATUS" or not path.is_file():
                continue
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if newest is None or mtime > newest[0]:
            newest = (mtime, path)
    if newest is None:
        return None
    when = datetime.fromtimestamp(newest[0]).astimezone().isoformat(timespec="seconds")
    return when, str(newest[1].relative_to(run_dir))


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run dir a checkpoint file lies in (``<run dir>/checkpoints/<name>.ckpt``), or None."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
