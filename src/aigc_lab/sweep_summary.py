"""The summary of a multirun: ``summary.csv``, ``summary.md`` and ``summary.png`` in the sweep dir.

A Hydra callback (``hydra.callbacks.sweep_summary``) writes them when a multirun ends, from what each job
left in its folder: ``.hydra/overrides.yaml``, ``STATUS`` and ``metrics.json``. Scanning folders instead
of collecting return values works with every launcher (in-process, joblib, SLURM) and covers earlier jobs
of a resumed sweep too. For an interrupted sweep: ``python -m aigc_lab.sweep_summary <sweep dir>``.

A study shared by several workers (``hydra.sweeper.storage`` set) is summarized from the study instead, so any
worker, on any machine, writes the whole sweep: one row per trial, with the final metrics of the trials whose
run dir this machine can read and the optimized value of the others.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

MAXIMIZE = {"maximize", "max"}


@dataclass
class Job:
    """One job folder of a sweep."""

    name: str
    overrides: list[str]
    # done | failed | interrupted (SIGTERM, Ctrl+C) | killed (its process died without a word) | running (still, or
    # on another host) | unknown (no STATUS)
    status: str
    detail: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, str]:
        return dict(o.split("=", 1) for o in self.overrides if "=" in o)


class SweepSummary(Callback):
    """Writes the summary files when a multirun ends; ``direction`` null: taken from the config."""

    def __init__(self, direction: str | None = None) -> None:
        self.direction = direction

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        written = summarize_config(config, self.direction)
        if written:
            log.info("Sweep summary: %s", ", ".join(str(p) for p in written))


def summarize_config(config: DictConfig, direction: str | None = None) -> list[Path]:
    """The summary of the sweep ``config`` describes (its multirun config): from its shared study, else from
    its sweep dir's job folders."""
    sweep_dir = Path(config.hydra.sweep.dir)
    metric, storage = config.get("optimized_metric"), OmegaConf.select(config, "hydra.sweeper.storage")
    study = OmegaConf.select(config, "hydra.sweeper.study_name")
    jobs = jobs_of_study(storage, study, metric) if storage and study else None
    return summarize(sweep_dir, metric, direction or direction_of(config), jobs)


def direction_of(cfg: DictConfig) -> str:
    """The sweeper's direction, else the checkpoint mode when it monitors the optimized metric, else minimize."""
    direction = OmegaConf.select(cfg, "hydra.sweeper.direction")
    if direction:
        return "maximize" if direction in MAXIMIZE else "minimize"
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor")
    if monitor and monitor == cfg.get("optimized_metric"):
        return "maximize" if OmegaConf.select(cfg, "callbacks.model_checkpoint.mode") == "max" else "minimize"
    return "minimize"


def summarize(sweep_dir: Path, metric: str | None, direction: str, jobs: list[Job] | None = None) -> list[Path]:
    """Write the three files into ``sweep_dir`` for ``jobs`` (default: its job folders); returns their paths (none
    when there is no job)."""
    jobs = ranked(collect_jobs(sweep_dir) if jobs is None else jobs, metric, direction)
    if not jobs:
        log.warning("No jobs in %s: no sweep summary", sweep_dir)
        return []
    sweep_dir.mkdir(parents=True, exist_ok=True)
    header, rows = table(jobs, metric)
    write_csv(sweep_dir / "summary.csv", header, rows)
    write_markdown(sweep_dir / "summary.md", header, rows, metric, direction)
    from aigc_lab.utils.sweep_plot import plot_sweep  # matplotlib only when there is something to draw

    plot_sweep(sweep_dir / "summary.png", [job.name for job in jobs], [job.params for job in jobs],
               [value_of(job, metric) for job in jobs], swept_keys(jobs), metric)
    return [sweep_dir / name for name in ("summary.csv", "summary.md", "summary.png")]


def collect_jobs(sweep_dir: Path) -> list[Job]:
    """Every subfolder with ``.hydra/overrides.yaml``, in job order."""
    folders = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    return [read_job(f) for f in sorted(folders, key=lambda p: (0, int(p.name), "") if p.name.isdigit()
                                        else (1, 0, p.name))]


def read_job(folder: Path) -> Job:
    from aigc_lab.utils.stale_runs import mark_if_killed

    mark_if_killed(folder)  # `running` with its process gone from this host: `killed`
    overrides = [str(o) for o in OmegaConf.load(folder / ".hydra" / "overrides.yaml")]
    status_file, metrics_file = folder / "STATUS", folder / "metrics.json"
    lines = status_file.read_text().splitlines() if status_file.exists() else []
    status = lines[0].split()[0] if lines and lines[0].split() else "unknown"
    detail = " ".join(line.strip() for line in lines[1:] if line.strip())
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return Job(folder.name, overrides, status, detail, {k: float(v) for k, v in metrics.items()})


STATES = {"COMPLETE": "done", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued", "PRUNED": "pruned"}


def jobs_of_study(storage: str, study_name: str, metric: str | None) -> list[Job]:
    """One job per trial of a shared study (its number as the job's name); trials never launched are left out."""
    import optuna

    from hydra_plugins.aigc_lab_sweeper._storage import open_storage
    from hydra_plugins.aigc_lab_sweeper.sweeper import NOT_RUN

    study = optuna.load_study(study_name=study_name, storage=open_storage(storage, None, None, None))
    jobs = []
    for trial in study.get_trials(deepcopy=False):
        if NOT_RUN in trial.user_attrs:
            continue
        folder = Path(trial.user_attrs.get("run_dir", "")) if trial.user_attrs.get("run_dir") else None
        local = folder is not None and (folder / ".hydra" / "overrides.yaml").exists()
        job = read_job(folder) if local else Job(str(trial.number), list(trial.user_attrs.get("overrides", [])),
                                                 STATES.get(trial.state.name, trial.state.name.lower()))
        job.name = str(trial.number)
        if trial.user_attrs.get("requeued_from") is not None:
            job.detail = f"re-run of trial {trial.user_attrs['requeued_from']} {job.detail}".strip()
        if trial.state.name == "FAIL" and not job.detail:
            job.detail = str(trial.user_attrs.get("error", ""))
        if metric and trial.value is not None and metric not in job.metrics:
            job.metrics[metric] = float(trial.value)
        jobs.append(job)
    return jobs


def value_of(job: Job, metric: str | None) -> float:
    value = job.metrics.get(metric, math.nan) if metric and job.status == "done" else math.nan
    return value if math.isfinite(value) else math.nan


def ranked(jobs: list[Job], metric: str | None, direction: str) -> list[Job]:
    """Best first by the direction, then done jobs without a value, then the rest (failed last)."""
    sign = -1.0 if direction in MAXIMIZE else 1.0

    def key(job: Job) -> tuple[int, float]:
        value = value_of(job, metric)
        if not math.isnan(value):
            return 0, sign * value
        return (1 if job.status == "done" else 2), 0.0

    return sorted(jobs, key=key)  # stable: job order within ties


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (all keys when there is a single job)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.params))
    varying = [k for k in keys if len({job.params.get(k) for job in jobs}) > 1]
    return varying if len(jobs) > 1 else keys


def table(jobs: list[Job], metric: str | None) -> tuple[list[str], list[list[Any]]]:
    """job, overrides (the swept ones), the optimized metric, status, the other final metrics, failure detail."""
    keys = swept_keys(jobs)
    others = sorted({k for job in jobs for k in job.metrics} - {metric})
    header = ["job", "overrides", metric or "optimized_metric", "status", *others, "detail"]
    rows = [[job.name, " ".join(f"{k}={job.params[k]}" for k in keys if k in job.params), value_of(job, metric),
             job.status, *(job.metrics.get(k, math.nan) for k in others), job.detail] for job in jobs]
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if _is_nan(v) else v for v in row] for row in rows])


def write_markdown(path: Path, header: list[str], rows: list[list[Any]], metric: str | None,
                   direction: str) -> None:
    def cell(value: Any) -> str:
        if _is_nan(value):
            return ""
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    lines = [f"# Sweep summary: {metric or 'no optimized_metric'} ({direction}), {len(rows)} jobs, best first", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def main(argv: list[str] | None = None) -> None:
    """``python -m aigc_lab.sweep_summary <sweep dir>``: (re)write the summary from the dir's multirun.yaml."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m aigc_lab.sweep_summary <sweep dir>")
    sweep_dir = Path(args[0])
    cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
    cfg.hydra.sweep.dir = str(sweep_dir)  # where it is now
    for path in summarize_config(cfg):
        print(path)


if __name__ == "__main__":
    main()
