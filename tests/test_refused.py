"""A refused command changes nothing: a resume the launcher refuses (a value out of range or of the wrong type,
an unknown key, a checkpoint of another system or network, hardware this machine lacks, missing data, a bad
callback setting) leaves the finished run's folder byte-identical; an accepted resume keeps the config of the
launch that made the run and records its own beside it (aigc_lab/resume.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import cli_fork
import pytest
import torch
from conftest import make_mnist, run_dirs
from runs import ENV, GAN, status

from aigc_lab.resume import original_overrides
from aigc_lab.utils.run_info import launch_file

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="the message of a machine without a GPU")
# The corpus comes from $AIGC_DATA_DIR/text/python-docs/: no data.*_files overrides, so that the run's overrides
# also compose with experiment=gan_mnist (the checkpoint-of-another-system case).
MLM = ("experiment=mlm_tiny", "debug=fdr", "data.batch_size=8", "data.eval_batch_size=16")


def train(cwd: Path, overrides: tuple[str, ...], env: dict[str, str]) -> Path:
    """A finished run of ``python -m aigc_lab overrides...`` in its own project root; returns its run dir."""
    cwd.mkdir()
    proc = cli_fork.run("aigc_lab", list(overrides), {**env, "PROJECT_ROOT": str(cwd)}, cwd, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (run,) = run_dirs(cwd)
    assert status(run) == "done"
    return run


@pytest.fixture(scope="module")
def lab(tmp_path_factory, text_corpus, cache_dir) -> SimpleNamespace:
    """A data dir with MNIST and the text corpus, and a finished tiny GAN run and masked-LM run made with it."""
    root = tmp_path_factory.mktemp("refused")
    data = make_mnist(root / "data", n_train=300, n_test=100)
    docs = data / "text" / "python-docs"
    docs.mkdir(parents=True)
    for split, name in (("train", "train.txt"), ("val", "valid.txt"), ("test", "test.txt")):
        shutil.copy(text_corpus[split], docs / name)
    env = {**os.environ, **ENV, "AIGC_DATA_DIR": str(data), "AIGC_CACHE_DIR": str(cache_dir)}
    return SimpleNamespace(root=root, env=env, gan=train(root / "gan", GAN, env), mlm=train(root / "mlm", MLM, env))


def fingerprint(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``, hidden ones included -> the sha256 of a file's bytes, or "<dir>"."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(folder.rglob("*"))}


# (id, the run the command would resume, its arguments, extra environment, a part of the message)
REFUSALS = [
    ("bad_range", "mlm", lambda lab: (f"ckpt_path={lab.mlm}", "model.net.d_model=-8"), {},
     "model.net: d_model must be positive, got -8"),
    ("wrong_type", "gan", lambda lab: (f"ckpt_path={lab.gan}", "trainer.max_epochs=abc"), {},
     "trainer.max_epochs: expected"),
    ("bad_seed", "gan", lambda lab: (f"ckpt_path={lab.gan}", "seed=abc"), {}, "seed: expected"),
    ("unknown_key_added", "gan", lambda lab: (f"ckpt_path={lab.gan}", "+model.nope=1"), {},
     "model.nope: unknown key"),
    ("unknown_key", "gan", lambda lab: (f"ckpt_path={lab.gan}", "model.nope=1"), {},
     "Could not override 'model.nope'"),  # Hydra's own message: it stops before writing anything
    ("checkpoint_of_another_system", "mlm",
     lambda lab: ("experiment=gan_mnist", f"ckpt_path={lab.mlm / 'checkpoints' / 'last.ckpt'}"), {},
     "is a checkpoint of a masked LM (experiment=mlm_*), not of this run's GANSystem"),
    ("another_network_width", "gan", lambda lab: (f"ckpt_path={lab.gan}", "model.net.g_width=16"), {},
     "has another network than model.net here (model.net.g_width=16, checkpoint 8"),
    pytest.param("gpu_not_there", "gan", lambda lab: (f"ckpt_path={lab.gan}", "trainer.accelerator=gpu"), {},
                 "trainer.accelerator=gpu but no CUDA GPU is visible here", marks=NO_GPU),
    ("precision_not_on_cpu", "gan",
     lambda lab: (f"ckpt_path={lab.gan}", "trainer.accelerator=cpu", "trainer.precision=16-mixed"), {},
     "trainer.precision=16-mixed cannot run on a CPU"),
    ("too_many_cpu_devices", "gan",
     lambda lab: (f"ckpt_path={lab.gan}", "trainer.accelerator=cpu", "trainer.devices=999"), {},
     "trainer.devices=999 on a CPU would start 999 processes"),
    ("missing_data_dir", "gan", lambda lab: (f"ckpt_path={lab.gan}", "data.download=false"),
     {"AIGC_DATA_DIR": "nowhere"}, "MNIST not found in"),
    ("bad_time_budget", "gan", lambda lab: (f"ckpt_path={lab.gan}", "callbacks.time_budget.minutes=-1"), {},
     "callbacks.time_budget.minutes must be a positive number of minutes or null, got -1"),
    ("bad_strategy", "gan", lambda lab: (f"ckpt_path={lab.gan}", "trainer.strategy=nope"), {},
     "You selected an invalid strategy name: `strategy='nope'`"),
]


@pytest.mark.parametrize(("name", "system", "args", "env", "message"), REFUSALS,
                         ids=[c.values[0] if hasattr(c, "values") else c[0] for c in REFUSALS])
def test_a_refused_resume_leaves_the_run_byte_identical(lab, tmp_path, name, system, args, env, message):
    run = getattr(lab, system)
    before = fingerprint(run)
    extra = {k: str(tmp_path / v) for k, v in env.items()}  # AIGC_DATA_DIR: a folder that does not exist
    proc = cli_fork.run("aigc_lab", list(args(lab)), {**lab.env, "PROJECT_ROOT": str(tmp_path), **extra}, tmp_path)
    stderr = " ".join(proc.stderr.split())  # messages may wrap
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert message in stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert fingerprint(run) == before  # names and bytes of every file, .hydra/ and STATUS included
    assert status(run) == "done"
    assert not (tmp_path / "outputs").exists()  # and no other run dir was made


def test_the_refusal_says_the_run_is_unchanged(lab, tmp_path):
    proc = cli_fork.run("aigc_lab", [f"ckpt_path={lab.gan}", "model.net.g_width=16"],
                        {**lab.env, "PROJECT_ROOT": str(tmp_path)}, tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1
    assert lines[-1] == f"(refused before anything was written: {lab.gan.resolve()} is unchanged)"
    assert len([line for line in lines if line.startswith("error:")]) == 1


def test_an_accepted_resume_keeps_the_first_launch_and_records_its_own(lab, tmp_path):
    run = lab.gan
    first = {name: (run / name).read_bytes() for name in (".hydra/config.yaml", ".hydra/overrides.yaml",
                                                          ".hydra/hydra.yaml", "config_tree.log")}
    proc = cli_fork.run("aigc_lab", [f"ckpt_path={run}", "trainer.max_epochs=2"],
                        {**lab.env, "PROJECT_ROOT": str(tmp_path)}, tmp_path, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert status(run) == "done"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4  # 2 epochs of 2
    assert {name: (run / name).read_bytes() for name in first} == first  # the config that made the run stays
    later = run / ".hydra.1"
    assert sorted(p.name for p in later.iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "max_epochs: 2" in (later / "config.yaml").read_text()
    assert "trainer.max_epochs=2" in (later / "overrides.yaml").read_text()
    assert "max_epochs: 2" in (run / "config_tree.1.log").read_text()
    launches = json.loads((run / "provenance.json").read_text())["launches"]
    assert len(launches) == 2 and "trainer.max_epochs=2" in launches[1]["command"]
    assert not (tmp_path / "outputs").exists()
    # The run is still a run: it evaluates from its saved config, and a next resume repeats the latest overrides.
    proc = cli_fork.run("aigc_lab.eval", [f"run_dir={run}", f"out={tmp_path / 'eval.json'}"],
                        {**lab.env, "PROJECT_ROOT": str(tmp_path)}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainer.max_epochs=2" in original_overrides(run)


def test_the_latest_launch_gives_the_overrides(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    assert original_overrides(tmp_path) == ["seed=1"]
    for n in (1, 2, 10):
        (tmp_path / f".hydra.{n}").mkdir()
        (tmp_path / f".hydra.{n}" / "overrides.yaml").write_text(f"- seed={n}\n")
    assert original_overrides(tmp_path) == ["seed=10"]  # by number, not by name


def test_launch_file_names():
    assert launch_file("config_tree.log", 0) == "config_tree.log"
    assert launch_file("config_tree.log", 2) == "config_tree.2.log"
    assert launch_file("git_diff.patch", 1) == "git_diff.1.patch"
