"""A throw-away PostgreSQL server for the shared-sweep tests: ``initdb`` into a fresh folder, ``pg_ctl start`` on a
free localhost port, trust authentication, no fsync; stopped and deleted afterwards. Run as the ``postgres`` user
when the tests run as root (PostgreSQL refuses root). ``server()`` returns None, with the reason, where PostgreSQL
or its Python driver is not installed."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


def binaries() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def missing() -> str | None:
    """Why a server cannot be started here, or None."""
    try:
        import psycopg  # noqa: F401 - the driver of SQLAlchemy's postgresql:// URLs
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if binaries() is None:
        return "PostgreSQL is not installed (Debian: apt install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as another user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: its ``url``; ``stop()`` and ``start()`` it again on the same data and port."""

    url: str
    stop: Callable[[], None]
    start: Callable[[], None]


@contextlib.contextmanager
def server() -> Iterator[Server]:
    """A server at ``postgresql://postgres@localhost:<port>/postgres``, deleted afterwards."""
    bin_dir = binaries()
    assert bin_dir is not None
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="aigc_pg_"))  # not under pytest's root-only tmp: postgres must reach it
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, timeout=120)

    def start() -> None:
        options = f"-p {port} -k {folder} -c listen_addresses=localhost -c fsync=off -c max_connections=50"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")

    def stop() -> None:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        start()
        yield Server(f"postgresql://postgres@localhost:{port}/postgres", stop, start)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
