"""``AigcOptunaSweeper``: Optuna ask/tell over any Hydra launcher, with failed trials recorded, not fatal.

Job ``N`` of the sweep dir is trial ``N`` of the study (``hydra.sweep.subdir`` is set per job). Several sweep
processes ("workers") may share one study through a shared storage (``_storage.py``): each asks for trials
until the study holds ``n_trials`` of them in all, counting those the other workers run. Only module-level
imports of Hydra here: Hydra's plugin scanner imports this file at every start-up, so optuna is imported when a
sweep starts.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.aigc_lab_sweeper._errors import SweepError

if TYPE_CHECKING:
    import optuna

    from hydra_plugins.aigc_lab_sweeper._space import SearchSpace

log = logging.getLogger(__name__)

DIRECTIONS = {"minimize": "minimize", "min": "minimize", "maximize": "maximize", "max": "maximize"}


class AigcOptunaSweeper(Sweeper):
    def __init__(self, direction: str, n_trials: int, n_jobs: int, sampler: Any, study_name: str,
                 storage: str | None, params: dict[str, str] | None, heartbeat_interval: int = 30,
                 grace_period: int | None = None) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction: expected minimize or maximize, got {direction!r}")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials and n_jobs must be >= 1, got {n_trials} and {n_jobs}")
        if heartbeat_interval < 1 or (grace_period is not None and grace_period <= heartbeat_interval):
            raise ValueError("hydra.sweeper: heartbeat_interval must be >= 1 and grace_period (when set) longer, "
                             f"got {heartbeat_interval} and {grace_period}")
        self.direction = DIRECTIONS[direction]
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_cfg, self.study_name, self.storage = sampler, study_name, storage
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.backend: Any = None  # the opened optuna storage

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        from hydra_plugins.aigc_lab_sweeper._storage import is_shared, is_storage_error, shown, storage_url

        assert self.config is not None and self.hydra_context is not None
        space = self._search_space(arguments)  # before anything is written: a refused sweep leaves nothing
        sweep_dir = Path(self.config.hydra.sweep.dir)
        url = storage_url(self.storage, sweep_dir)
        if not is_shared(self.storage):
            sweep_dir.mkdir(parents=True, exist_ok=True)  # the study's SQLite file goes there
        study = self._study(url)  # a shared storage that cannot be reached: one line, and nothing written
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        if not is_shared(self.storage):  # shared: other workers' trials may be live, their heartbeats tell
            requeue_interrupted(study)  # (_open_slots, before every ask)
        log.info("Study %r in %s: %d trials done, %d in all to run, %d per batch", study.study_name, shown(url),
                 len(counted_trials(study)), self.n_trials, self.n_jobs)
        returns: list[Sequence[JobReturn]] = []
        try:
            while (size := min(self.n_jobs, self._open_slots(study))) > 0:
                results = self._run_batch(study, space, size)
                if not results:  # other workers took the last slots
                    break
                returns.append(results)
            log_best(study)
        except Exception as err:
            if not is_storage_error(err):
                raise
            raise SweepError(f"lost the Optuna storage {shown(url)} (hydra.sweeper.storage) after {len(returns)} "
                             f"batch(es): {type(err).__name__}; the trials it holds are kept, rerun to go on") from None
        return returns

    def _search_space(self, arguments: list[str]) -> SearchSpace:
        from hydra_plugins.aigc_lab_sweeper._space import search_space

        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        # the configured params first: command-line sweeps extend them, command-line values pin them
        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        space = search_space(parser.parse_overrides(lines))
        if not space.distributions:
            raise SweepError("hydra.sweeper.params is empty and no sweep (interval, choice, range) was given")
        return space

    def _study(self, url: str) -> optuna.Study:
        import optuna
        from hydra.utils import instantiate

        from hydra_plugins.aigc_lab_sweeper._storage import is_shared, open_storage

        self.backend = open_storage(url, self.heartbeat_interval, self.grace_period, requeue)
        study = optuna.create_study(study_name=self.study_name, storage=self.backend, direction=self.direction,
                                    load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise SweepError(f"study {self.study_name!r} was created to {study.direction.name.lower()}, "
                             f"not {self.direction}: use another study_name or storage")
        if isinstance(self.sampler_cfg, DictConfig):
            # a resumed study must not replay its first random draws: offset the seed by the trials it holds;
            # workers sharing a study must not draw alike: offset it by the worker too (no longer repeatable)
            seed, held = self.sampler_cfg.get("seed"), len(study.get_trials(deepcopy=False))
            if seed is not None and is_shared(self.storage):
                seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
            extra = {"seed": seed + held} if seed is not None and (held or is_shared(self.storage)) else {}
            study.sampler = instantiate(self.sampler_cfg, **extra)
        elif self.sampler_cfg is not None:  # a sampler object, given from Python
            study.sampler = self.sampler_cfg
        return study

    def _open_slots(self, study: optuna.Study) -> int:
        """Trials still to ask for: ``n_trials`` less those finished or running (here or in other workers); a
        queued trial is asked for like a new one (``study.ask`` takes the queued ones first)."""
        from optuna.trial import TrialState

        from hydra_plugins.aigc_lab_sweeper._storage import fail_stale_trials, is_shared

        if is_shared(self.storage):
            fail_stale_trials(study)
        return self.n_trials - sum(t.state != TrialState.WAITING for t in slot_holders(study))

    def _ask(self, study: optuna.Study, space: SearchSpace, size: int) -> list[optuna.Trial]:
        """Up to ``size`` trials; fewer when other workers asked at the same time for the study's last slots (a
        trial asked beyond ``n_trials`` is told FAIL at once, marked ``not_run``, and never launched)."""
        from optuna.trial import TrialState

        trials = []
        for _ in range(size):
            trial = study.ask(space.distributions)
            if [t.number for t in slot_holders(study)].index(trial.number) >= self.n_trials:
                trial.set_user_attr(NOT_RUN, f"asked beyond n_trials={self.n_trials} by a worker that raced another")
                study.tell(trial, state=TrialState.FAIL)
                break
            trials.append(trial)
        return trials

    def _run_batch(self, study: optuna.Study, space: SearchSpace, size: int) -> Sequence[JobReturn]:
        from hydra_plugins.aigc_lab_sweeper._storage import heartbeats

        trials = self._ask(study, space, size)
        if not trials:
            return []
        batch = [space.overrides(trial.params) for trial in trials]
        sweep_dir = Path(self.config.hydra.sweep.dir).resolve()
        for trial, overrides in zip(trials, batch):
            trial.set_user_attr("overrides", overrides)
            trial.set_user_attr("run_dir", str(sweep_dir / str(trial.number)))  # on the worker's host
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # the sweep process running it
        # job N in folder N: the numbers of one worker's trials need not be consecutive
        jobs = [[*overrides, f"hydra.sweep.subdir={trial.number}"] for trial, overrides in zip(trials, batch)]
        try:
            self.validate_batch_is_legal(jobs)
            with heartbeats(self.backend, study, trials):
                results = self.launcher.launch(jobs, initial_job_idx=trials[0].number)
        except Exception as err:  # a config that cannot be composed: not the trials' fault, stop the sweep
            for trial in trials:
                fail(study, trial, f"not launched: {type(err).__name__}: {err}")
            raise
        for trial, result in zip(trials, results):
            tell(study, trial, result)
        return results


def tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> None:
    """COMPLETE with a finite value; a job that raised or returned None/NaN/inf is a FAIL and the sweep goes on."""
    from optuna.trial import TrialState

    try:
        value = result.return_value  # re-raises the job's exception
    except Exception as err:
        fail(study, trial, f"{type(err).__name__}: {err}")
        return
    try:
        value = float(value)
    except (TypeError, ValueError):
        fail(study, trial, job_failure(result) or f"returned {value!r}, not a number (is optimized_metric set?)")
        return
    if not math.isfinite(value):
        # a failed job returns NaN in a multirun; why it failed is in its run dir's STATUS file
        fail(study, trial, job_failure(result) or f"returned {value}")
        return
    study.tell(trial, value, state=TrialState.COMPLETE)
    log.info("Trial %d: %s", trial.number, value)


def job_failure(result: JobReturn) -> str | None:
    """The reason a job marked its run dir failed (``STATUS``: ``failed`` then the reason, written by the
    launcher's ``mark_run``), or None when the job did not mark it failed or has no run dir."""
    output_dir = OmegaConf.select(result.hydra_cfg, "hydra.runtime.output_dir") if result.hydra_cfg else None
    if not output_dir:
        return None
    try:
        status, _, detail = (Path(output_dir) / "STATUS").read_text().partition("\n")
    except (OSError, UnicodeDecodeError):
        return None
    if status.strip() != "failed":
        return None
    return detail.strip() or "failed (no reason recorded)"


def fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("error", reason[:2000])
    study.tell(trial, state=TrialState.FAIL)
    log.warning("Trial %d failed: %s", trial.number, (reason.splitlines() or [""])[0])


NOT_RUN = "not_run"  # user attribute of a trial asked beyond n_trials (by racing workers) and never launched


def _superseded(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of trials whose parameters were queued again (they were cut off): their re-run counts instead."""
    return {t.user_attrs.get("requeued_from") for t in trials} - {None}


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Finished trials, except those an interrupted sweep left running (their parameters run again) and those
    asked beyond ``n_trials``."""
    trials = study.get_trials(deepcopy=False)
    gone = _superseded(trials)
    return [t for t in trials if t.state.is_finished() and t.number not in gone and NOT_RUN not in t.user_attrs]


def slot_holders(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count against ``n_trials``, by number: finished, running (in any worker) and queued."""
    trials = study.get_trials(deepcopy=False)
    gone = _superseded(trials)
    return [t for t in trials if t.number not in gone and NOT_RUN not in t.user_attrs]


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue the parameters of ``trial`` (failed: it was cut off) again; the re-run takes its place in the count."""
    study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number}, skip_if_exists=False)
    log.warning("Trial %d was cut off (its worker stopped or died): its parameters are queued again", trial.number)


def requeue_interrupted(study: optuna.Study) -> None:
    """Trials still RUNNING when a sweep on the sweep dir's own SQLite file starts were cut off by a previous,
    interrupted sweep (that storage has one worker): mark them failed and queue their parameters again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        requeue(study, trial)


def log_best(study: optuna.Study) -> None:
    try:
        best = study.best_trial
    except ValueError:  # no completed trial at all
        log.warning("No trial of study %r completed", study.study_name)
        return
    log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
