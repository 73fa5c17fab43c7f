"""``python -m <module> args...`` (and ``python <bench script> args...``) many times for the price of one start-up,
for the CLI and bench tests (``run_cli``, ``run_bench``).

Importing Lightning takes seconds of a busy 2-core machine, longer than most bad inputs take to be refused.
So each run is a process forked from a multiprocessing forkserver that imported Lightning and the
launcher once: the fork runs the module as ``python -m`` does (``runpy.run_module(..., run_name="__main__")``),
with its own argv, environment, working dir, stdout, stderr and exit code.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys
from pathlib import Path
from subprocess import CompletedProcess

# What the server imports once. Not this module: Python 3.11's forkserver does not put the tests folder
# on its sys.path (and skips a preload it cannot import without a word).
PRELOAD = ["lightning", "torchvision.datasets", "aigc_lab.train", "aigc_lab.utils.config_check"]


def run(module: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> CompletedProcess:
    """Run ``python -m module *args`` in a fork of the preloaded server; stdout and stderr are captured."""
    return _fork(module, False, args, env, cwd, timeout)


def run_script(script: Path, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> CompletedProcess:
    """Run ``python script *args`` (a bench script) the same way."""
    return _fork(str(script), True, args, env, cwd, timeout)


def _fork(target: str, is_script: bool, args: list[str], env: dict[str, str], cwd: Path,
          timeout: float) -> CompletedProcess:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # takes effect when the server starts (the first call)
    out, err = cwd / ".cli_stdout", cwd / ".cli_stderr"
    child = ctx.Process(target=_main, args=(target, is_script, args, env, str(cwd), str(out), str(err)))
    child.start()
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        child.join()
    return CompletedProcess([target, *args], child.exitcode, out.read_text(), err.read_text())


def _main(target: str, is_script: bool, args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    os.chdir(cwd)
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update(env)
    # Under mimalloc the launcher would restart itself (utils/malloc.py) and throw the preloaded imports away.
    os.environ.setdefault("AIGC_MALLOC", "glibc")
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    for entry in reversed(env.get("PYTHONPATH", "").split(os.pathsep)):  # as a new interpreter would read it
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    sys.argv = [target, *args]
    sys.orig_argv = [sys.executable, *([] if is_script else ["-m"]), target, *args]  # as typed (provenance records it)
    if "OMP_NUM_THREADS" in env:  # the server's torch read its own environment when it was imported
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    if is_script:
        sys.path.insert(0, os.path.dirname(target))  # as ``python script`` puts the script's folder first
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
