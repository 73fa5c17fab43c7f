"""Every experiment and debug config composes and passes the key/type check."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from aigc_lab.utils.config_check import check_targets
from aigc_lab.utils.paths import conf_dir

EXPERIMENTS = sorted(p.stem for p in (Path(conf_dir()) / "experiment").glob("*.yaml"))
DEBUGS = sorted(p.stem for p in (Path(conf_dir()) / "debug").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (Path(conf_dir()) / "trainer").glob("*.yaml"))


def _compose(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path}", f"paths.work_dir={tmp_path}"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("debug", [None, *DEBUGS])
def test_experiment_composes(tmp_path, experiment, debug):
    cfg = _compose(tmp_path, f"experiment={experiment}", *([f"debug={debug}"] if debug else []))
    check_targets(cfg)
    assert cfg.optimized_metric and cfg.task_name


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_presets_compose(tmp_path, trainer):
    check_targets(_compose(tmp_path, f"trainer={trainer}"))


def test_at_least_the_documented_experiments():
    assert {"gan_mnist", "mnist_classifier"} <= set(EXPERIMENTS)


def test_the_classifier_experiment_keeps_the_fid_network_unless_told(tmp_path):
    """A run of experiment=mnist_classifier (a debug run, a sweep trial) must not replace the cached FID feature
    network that every GAN run measures with."""
    cfg = _compose(tmp_path, "experiment=mnist_classifier")
    assert cfg.model.export_path is None
    gan = _compose(tmp_path, "experiment=gan_mnist")
    assert gan.model.classifier_path.endswith("mnist_classifier.pt")
