"""Atomic checkpoint writes: a ``kill -9``, a full disk or a crash mid-write never leaves a corrupt checkpoint.

Lightning 2.6's ``TorchCheckpointIO`` serializes the checkpoint into memory, then writes it through an fsspec
transaction whose temporary file lives in the system temp dir (``tempfile.mkstemp()``) and is moved into place
with ``shutil.move``: a rename when ``/tmp`` is on the checkpoint's file system, else a copy that rewrites the
target in place; nothing is fsynced, a killed process leaves its temp file behind in ``/tmp``, and the whole
folder tree is recreated if it is gone. ``AtomicCheckpointIO`` (enabled in ``conf/trainer/default.yaml``)
instead writes ``.<name>.<pid>.<random>.tmp`` next to the target, fsyncs it, ``os.replace``s it over the
target (atomic on POSIX and Windows within one file system) and fsyncs the folder, so the target is always
either the previous complete checkpoint or the new complete one. A failed write removes its temp file and
leaves the previous checkpoint untouched; the temp files of a killed process are removed by the next save
into that folder. Temp names end in ``.tmp``, so nothing that globs ``*.ckpt`` mistakes them for checkpoints.
The temp file gets the mode of any file a run writes (0666 less the umask), not ``mkstemp``'s 0600, so a
checkpoint is as readable as the rest of its run dir.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aigc_lab.errors import UserError

_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .<name>.<pid>.<random>.tmp
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # EDQUOT: quota


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic and durable (temp file, fsync, rename, fsync of the
    folder). Loading and removing are Lightning's; remote paths (``s3://...``) keep Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, Path(path))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, atomically: ``path`` holds either its previous content or all of ``obj``.
    Raises UserError naming the path when the folder is gone, the disk is full or the write fails."""
    folder = _checkpoint_folder(path)
    _remove_stale_temps(folder)
    temp = None
    try:
        fd, temp = _create_temp(folder, path.name)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint
        os.replace(temp, path)
    except BaseException as err:
        if temp is not None:
            with suppress(OSError):
                os.unlink(temp)
        cause = _os_error(err)
        if cause is None:
            raise
        what = "no space left on device" if cause.errno in _DISK_FULL else cause.strerror or str(cause)
        fix = ("free space (or raise the quota) on that file system and resume the run" if cause.errno in _DISK_FULL
               else "check that the run dir is writable and resume the run")
        raise UserError(f"{what} while writing checkpoint {path}; {_previous(path)}. Fix: {fix}") from err
    _fsync_folder(folder)  # makes the rename itself durable


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new ``.<name>.<pid>.<random>.tmp`` in ``folder``, open for writing: (file descriptor, path). Its mode is
    0666 less the umask, like any file ``open()`` creates; O_EXCL never reuses a file that exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        temp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temp file name", str(folder))


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind a failed write: ``err`` itself, or the one torch.save's zip writer turned into a
    RuntimeError. Anything else (a bug, Ctrl+C) is not a file-system problem and is re-raised as is."""
    if isinstance(err, OSError):
        return err
    if isinstance(err, RuntimeError) and isinstance(err.__context__, OSError):
        return err.__context__
    return None


def _checkpoint_folder(path: Path) -> Path:
    """The target's folder, created when only its last level is missing (``checkpoints/`` at the first save).
    A missing parent means the run dir was removed or moved during the run: recreating the whole tree would
    hide that, and write checkpoints where nothing else of the run is."""
    folder = path.parent
    if folder.is_dir():
        return folder
    if not folder.parent.is_dir():
        raise UserError(f"cannot write checkpoint {path}: the folder {folder.parent} does not exist (was the run "
                        f"dir removed or moved during the run?); checkpoints written before are wherever it went")
    with suppress(FileExistsError):  # another rank or writer made it first
        os.mkdir(folder)
    return folder


def _previous(path: Path) -> str:
    return f"the previous checkpoint {path} is intact" if path.is_file() else "nothing was written there"


def _remove_stale_temps(folder: Path) -> None:
    """Delete temp files that a killed process left in ``folder`` (their writer's pid is gone)."""
    for temp in folder.glob(".*.tmp"):
        match = _TEMP.match(temp.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            with suppress(OSError):
                temp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else (EPERM), or no way to tell: keep its files
        return True
    return True


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened (and renames need no folder fsync)
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename is done either way
        pass
    finally:
        os.close(fd)
