"""The structured configs of the sweeper (``hydra/sweeper: aigc_optuna``) and the launcher (``hydra/launcher:
devices``)."""

# no `from __future__ import annotations`: Hydra's plugin scanner runs this module before it is in
# sys.modules, and dataclasses must then see real annotations, not strings
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class AigcOptunaSweeperConf:
    _target_: str = "hydra_plugins.aigc_lab_sweeper.sweeper.AigcOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler itself (its seed depends on the study)
    direction: str = "minimize"  # minimize | maximize
    n_trials: int = 20  # trials the study should hold in the end: a resumed study only runs the missing ones
    n_jobs: int = 1  # trials asked and launched per batch (run in parallel by a parallel launcher, e.g. joblib)
    # any optuna sampler by _target_; the seed makes a sweep repeatable
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    study_name: str = "sweep"
    # null: sqlite:///<sweep dir>/optuna.db (one worker; rerunning into the same sweep dir resumes). Shared by many
    # workers: a database URL (postgresql://user:password@host/db) or journal:<file> (one host); _storage.py
    storage: Any = None
    heartbeat_interval: int = 30  # seconds between a running trial's heartbeats (database storages)
    grace_period: Any = None  # seconds without a heartbeat after which a trial is dead and runs again (null: 2 x)
    # search space, key: sweep expression as on the command line (interval, tag(log, ...), choice, range)
    params: Any = None


@dataclass
class DevicesLauncherConf:
    _target_: str = "hydra_plugins.aigc_lab_sweeper.launcher.DevicesLauncher"
    devices: Any = "auto"  # device ids to share out, one job each at a time (auto: every GPU seen)
    cpu_jobs: int = 2  # jobs at once on a machine without a GPU (devices: auto)


ConfigStore.instance().store(group="hydra/sweeper", name="aigc_optuna", node=AigcOptunaSweeperConf, provider="aigc_lab")
ConfigStore.instance().store(group="hydra/launcher", name="devices", node=DevicesLauncherConf, provider="aigc_lab")
