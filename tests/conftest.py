"""Shared fixtures: a tiny MNIST-format data set and a small text corpus written by the tests, and a CLI runner."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import cli_fork
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# `precision: auto` resolves per machine (utils/hardware.py). The suite pins the CPU probe so that it trains the
# same way on every machine (32-true, as on a CPU without native bf16); tests/test_hardware.py covers each branch.
# A test process's environment reaches the CLI runs it starts.
os.environ.setdefault("AIGC_CPU_BF16", "emulated")


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 (magic 2051): big-endian header then uint8 pixels, as in the MNIST distribution."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy 'digits': each class is a fixed blob pattern plus noise, 28x28 uint8."""
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(0).random((10, 28, 28)) > 0.75
    labels = rng.integers(0, 10, n)
    noise = rng.random((n, 28, 28)) > 0.95
    images = np.where(templates[labels] ^ noise, 255, 0)
    return images.astype(np.uint8), labels


def make_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Write ``<root>/mnist/MNIST/raw`` as torchvision expects; returns ``root`` (the data dir)."""
    raw = root / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = fake_digits(n, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


SUBJECTS = ("the parser", "a module", "this function", "the class", "each thread", "the server", "my script",
            "the old library", "a small test", "the new decoder", "every socket", "the logger")
VERBS = ("returns", "reads", "writes", "opens", "closes", "raises", "accepts", "encodes", "imports", "formats")
OBJECTS = ("a list of strings", "the file", "an integer", "the error", "a dictionary", "the path", "a buffer",
           "the message", "two bytes", "a tuple of names", "the header", "an iterator")
TAILS = ("when it is called.", "before the loop ends.", "if the value is empty.", "for each line of input.",
         "after the timeout expires.", "unless a flag is set.", "in text mode.", "with a default encoding.")


def make_corpus(path: Path, n_lines: int, seed: int) -> Path:
    """Varied English-ish sentences, a few per line, with blank lines between paragraphs."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        sentences = [f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                     f"{rng.choice(TAILS)}" for _ in range(rng.randint(1, 3))]
        lines.append(" ".join(sentences))
        if i % 7 == 6:
            lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> dict[str, Path]:
    """{"train", "val", "test"} -> small UTF-8 text files (300 / 60 / 60 lines)."""
    root = tmp_path_factory.mktemp("text")
    return {split: make_corpus(root / f"{split}.txt", n, seed)
            for split, n, seed in (("train", 300, 1), ("val", 60, 2), ("test", 60, 3))}


@pytest.fixture
def single_thread():
    """One intra-op thread for tests on tiny tensors: with two threads, OpenMP barriers stall for whole
    scheduler slices whenever another process keeps a core busy (a 2.5 ms step then takes 600 ms)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def run_cli(data_dir, cache_dir, tmp_path):
    """Run ``python -m <module> overrides...`` in a process of its own, as a user would, in tmp_path: a fork of a
    server that imported Lightning once (tests/cli_fork.py), the same code path for a fraction of the start-up
    (``fork=False``: a new interpreter)."""

    def run(*overrides: str, module: str = "aigc_lab", env: dict | None = None, check: bool = True,
            fork: bool = True):
        full_env = {
            **os.environ,
            "AIGC_DATA_DIR": str(data_dir),
           "AIGC_CACHE_DIR": str(cache_dir),
            "PROJECT_ROOT": str(tmp_path),
            **(env or {}),
        }
        if fork:
            proc = cli_fork.run(module, list(overrides), full_env, tmp_path, timeout=600)
        else:  # a new interpreter, for what a fork of the server cannot host (joblib's loky workers hang there)
            proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=tmp_path, env=full_env,
                                  capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
            )
        return proc

    return run


def run_dirs(root: Path, task: str = "debug") -> list[Path]:
    return sorted((root / "outputs" / task / "runs").glob("*"))


TOY_FRENCH = {"the": "le", "a": "un", "parser": "analyseur", "module": "module", "reads": "lit", "writes": "écrit",
              "opens": "ouvre", "closes": "ferme", "file": "fichier", "list": "liste", "path": "chemin",
              "error": "erreur", "buffer": "tampon", "message": "message", "header": "en-tête", "returns": "rend"}
TSV_MALFORMED = ("a line without any tab", "another line without a tab", "\tle fichier", "the file\t")


def make_pairs(path: Path, n: int, seed: int, malformed: bool = False) -> Path:
    """``source<TAB>target`` lines: short English-ish sentences and a word-by-word toy 'French'; with
    ``malformed``, the lines of TSV_MALFORMED (2 without a tab, 2 with an empty side) are mixed in."""
    rng = random.Random(seed)
    words = sorted(TOY_FRENCH)
    lines = []
    for _ in range(n):
        source = " ".join(rng.choice(words) for _ in range(rng.randint(2, 7)))
        lines.append(f"{source}\t{' '.join(TOY_FRENCH[w] for w in source.split())}")
    if malformed:
        for i, line in enumerate(TSV_MALFORMED):
            lines.insert(3 + 5 * i, line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tsv_corpus(tmp_path_factory) -> dict[str, Path]:
    """{"train", "val", "test"} -> small TSV files (300 / 40 / 40 pairs); train also holds 4 malformed lines."""
    root = tmp_path_factory.mktemp("pairs")
    return {split: make_pairs(root / f"{split}.tsv", n, seed, malformed=split == "train")
            for split, n, seed in (("train", 300, 1), ("val", 40, 2), ("test", 40, 3))}


# ---------------------------------------------------------------- bench scripts
def run_bench(script: str, *args: str, cwd, cache_dir, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # tiny ops: no stalls beside a busy core
           "AIGC_CACHE_DIR": str(cache_dir), "PROJECT_ROOT": str(cwd)}
    proc = cli_fork.run_script(REPO / "bench" / script, list(args), env, Path(cwd), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
    return proc


def table_rows(stdout: str, header: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = lines.index(header)
    assert lines[start + 1].startswith("|---")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows
