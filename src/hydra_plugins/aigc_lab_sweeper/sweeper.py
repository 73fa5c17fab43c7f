"""``AigcOptunaSweeper``: Optuna ask/tell over any Hydra launcher, with failed trials recorded, not fatal.

Job ``N`` of the sweep dir is trial ``N`` of the study. Only module-level imports of Hydra here: Hydra's
plugin scanner imports this file at every start-up, so optuna is imported when a sweep starts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from aigc_lab.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from hydra_plugins.aigc_lab_sweeper._space import SearchSpace

log = logging.getLogger(__name__)

DIRECTIONS = {"minimize": "minimize", "min": "minimize", "maximize": "maximize", "max": "maximize"}


class SweepError(CompactHydraException, ConfigError):
    """A sweep that cannot start (a bad search space): Hydra prints its one-line message, no traceback."""


class AigcOptunaSweeper(Sweeper):
    def __init__(self, direction: str, n_trials: int, n_jobs: int, sampler: Any, study_name: str,
                 storage: str | None, params: dict[str, str] | None) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction: expected minimize or maximize, got {direction!r}")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials and n_jobs must be >= 1, got {n_trials} and {n_jobs}")
        self.direction = DIRECTIONS[direction]
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.sampler_cfg, self.study_name, self.storage = sampler, study_name, storage
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.hydra_context is not None
        space = self._search_space(arguments)  # before anything is written: a refused sweep leaves nothing
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = self._study(sweep_dir)
        requeue_interrupted(study)
        done = len(counted_trials(study))
        todo = self.n_trials - done
        log.info("Study %r in %s: %d trials done, %d to run, %d per batch",
                 study.study_name, self._storage_url(sweep_dir), done, max(todo, 0), self.n_jobs)
        returns = []
        while todo > 0:
            batch = min(self.n_jobs, todo)
            returns.append(self._run_batch(study, space, batch))
            todo -= batch
        log_best(study)
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

    def _storage_url(self, sweep_dir: Path) -> str:
        return self.storage or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"

    def _study(self, sweep_dir: Path) -> optuna.Study:
        import optuna
        from hydra.utils import instantiate

        study = optuna.create_study(study_name=self.study_name, storage=self._storage_url(sweep_dir),
                                    direction=self.direction, load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise SweepError(f"study {self.study_name!r} was created to {study.direction.name.lower()}, "
                             f"not {self.direction}: use another study_name or storage")
        if isinstance(self.sampler_cfg, DictConfig):
            # a resumed study must not replay its first random draws: offset the seed by the trials it holds
            seed, held = self.sampler_cfg.get("seed"), len(study.get_trials(deepcopy=False))
            extra = {"seed": seed + held} if seed is not None and held else {}
            study.sampler = instantiate(self.sampler_cfg, **extra)
        elif self.sampler_cfg is not None:  # a sampler object, given from Python
            study.sampler = self.sampler_cfg
        return study

    def _run_batch(self, study: optuna.Study, space: SearchSpace, size: int) -> Sequence[JobReturn]:
        trials = [study.ask(space.distributions) for _ in range(size)]
        batch = [space.overrides(trial.params) for trial in trials]
        for trial, overrides in zip(trials, batch):
            trial.set_user_attr("overrides", overrides)
        try:
            self.validate_batch_is_legal(batch)
            # one sweeper process asks trials one after another, so their numbers are consecutive
            results = self.launcher.launch(batch, initial_job_idx=trials[0].number)
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


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Finished trials, except those an interrupted sweep left running (their parameters run again)."""
    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get("requeued_from") for t in trials}
    return [t for t in trials if t.state.is_finished() and t.number not in requeued]


def requeue_interrupted(study: optuna.Study) -> None:
    """Trials still RUNNING when a sweep starts were cut off by a previous, interrupted sweep: mark them failed
    and enqueue their parameters again. (So two sweeps must not share one study at the same time.)"""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number}, skip_if_exists=False)
        log.warning("Trial %d was interrupted: its parameters are queued again", trial.number)


def log_best(study: optuna.Study) -> None:
    try:
        best = study.best_trial
    except ValueError:  # no completed trial at all
        log.warning("No trial of study %r completed", study.study_name)
        return
    log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
