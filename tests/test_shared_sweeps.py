"""Optuna sweeps shared by several worker processes: a journal file, and a real PostgreSQL server started for the
tests (skipped, with the reason, where PostgreSQL cannot run). Workers pull trials from one study until it holds
``n_trials``; a worker killed with ``kill -9`` leaves a trial that the next worker finds by its stopped heartbeat
and runs again; the summary is rebuilt from the study; a storage that cannot be reached is one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import postgres
import pytest
from runs import ENV
from test_sweeps import FAST, summary_rows

SEARCH = ("hparams_search=seq2seq_optuna", "hydra.sweeper.study_name=shared")


@pytest.fixture(scope="module")
def postgres_url():
    reason = postgres.missing()
    if reason:
        pytest.skip(reason)
    with postgres.server() as server:
        yield server.url


@pytest.fixture
def start_worker(data_dir, cache_dir, tmp_path):
    """Start ``python -m aigc_lab -m ...`` (a sweep worker) in tmp_path; returns the process."""
    tests_dir = str(Path(__file__).parent)

    def start(*overrides: str, env: dict | None = None) -> subprocess.Popen:
        full_env = {**os.environ, **ENV, "AIGC_DATA_DIR": str(data_dir), "AIGC_CACHE_DIR": str(cache_dir),
                    "PROJECT_ROOT": str(tmp_path), **(env or {}),
                    "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
        return subprocess.Popen([sys.executable, "-m", "aigc_lab", "-m", *FAST, *SEARCH, *overrides], cwd=tmp_path,
                                env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    return start


def finish(*procs: subprocess.Popen) -> list[str]:
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
    return outputs


def load(storage: str):
    import optuna

    from hydra_plugins.aigc_lab_sweeper._storage import open_storage

    return optuna.load_study(study_name="shared", storage=open_storage(storage, None, None, None))


def check_shared_sweep(storage: str, sweep: Path, n_trials: int, workers: int) -> None:
    """n_trials complete trials in all, each in the run dir of its number, every worker ran some."""
    trials = [t for t in load(storage).trials if t.state.name == "COMPLETE"]
    assert len(trials) == n_trials and len({t.number for t in trials}) == n_trials
    assert sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()) == sorted(str(t.number) for t in trials)
    for trial in trials:
        overrides = (sweep / str(trial.number) / ".hydra" / "overrides.yaml").read_text()
        assert all(o in overrides for o in trial.user_attrs["overrides"])  # the trial's own parameters
    assert len({t.user_attrs["worker"] for t in trials}) == workers  # each worker ran some of them


def test_two_workers_share_a_journal_file(start_worker, tmp_path):
    sweep, storage = tmp_path / "sweep", f"journal:{tmp_path / 'study.log'}"
    args = (f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=4")
    finish(start_worker(*args), start_worker(*args))
    check_shared_sweep(storage, sweep, 4, workers=2)


def test_two_workers_share_a_postgresql_study(start_worker, tmp_path, postgres_url):
    import optuna

    storage = postgres_url
    with pytest.raises(KeyError):
        optuna.delete_study(study_name="shared", storage=storage)  # a fresh server: no study yet
    sweep = tmp_path / "sweep"
    args = (f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=4")
    finish(start_worker(*args), start_worker(*args))
    check_shared_sweep(storage, sweep, 4, workers=2)

    # any worker rebuilds the summary from the study, here from a copy of the sweep config alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "multirun.yaml").write_text((sweep / "multirun.yaml").read_text())
    subprocess.run([sys.executable, "-m", "aigc_lab.sweep_summary", str(elsewhere)], check=True, timeout=120)
    rows = summary_rows(elsewhere)
    assert len(rows) == 4 and all(r["status"] == "done" and r["val/bleu"] for r in rows)
    optuna.delete_study(study_name="shared", storage=storage)


def test_a_worker_killed_mid_trial_is_found_by_its_heartbeat_and_rerun(start_worker, tmp_path, postgres_url):
    storage, sweep, mark = postgres_url, tmp_path / "sweep", tmp_path / "training"
    args = (f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=killed", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")
    slow = {"MARK_AT_STEP": "1", "MARK_FILE": str(mark), "SLOW_STEP_S": "30"}
    victim = start_worker(*args, "+callbacks.mark._target_=mark_training.MarkTraining", env=slow)
    deadline = time.monotonic() + 120
    while not mark.exists():
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[0][-3000:]
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its trial die without a word
    victim.wait()
    time.sleep(4)  # past the grace period

    (out,) = finish(start_worker(*args))
    assert "Trial 0 was cut off" in out
    import optuna

    trials = optuna.load_study(study_name="killed", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    rerun = next(t for t in trials if t.user_attrs.get("requeued_from") == 0)
    assert rerun.params == trials[0].params and (sweep / str(rerun.number) / "metrics.json").is_file()


def test_an_unreachable_storage_is_one_line_without_the_password(start_worker, tmp_path):
    sweep = tmp_path / "sweep"
    proc = start_worker(f"hydra.sweep.dir={sweep}", "hydra.sweeper.storage=postgresql://me:s3cret@localhost:1/db")
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "Traceback" not in out and "s3cret" not in out
    assert "cannot open the Optuna storage postgresql://me:***@localhost:1/db" in out
    assert not sweep.exists()  # nothing written


def test_a_ddp_trial_runs_the_sampled_values_on_every_rank(start_worker, tmp_path):
    """The sweeper samples once, in the sweep process; both DDP ranks of the trial train with its values."""
    import json

    sweep, reports = tmp_path / "sweep", tmp_path / "reports"
    reports.mkdir()
    ddp = ("trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "data.max_tokens=512",
           "data.eval_max_tokens=256")  # several batches a split: at least one a rank
    proc = start_worker(f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=1", *ddp,
                        "+callbacks.report._target_=rank_report.RankReport", env={"RANK_REPORT_DIR": str(reports)})
    finish(proc)
    import optuna

    (trial,) = optuna.load_study(study_name="shared", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    ranks = sorted((json.loads(p.read_text()) for p in reports.glob("*.json")), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    for key in ("lr", "warmup_ratio", "label_smoothing"):
        assert ranks[0]["hparams"][key] == ranks[1]["hparams"][key] == pytest.approx(trial.params[f"model.{key}"])
    assert ranks[0]["digest"] == ranks[1]["digest"]  # and end with the same weights


def test_the_devices_launcher_runs_one_job_per_device_at_a_time(start_worker, tmp_path):
    """hydra/launcher=devices: 3 jobs at once over 2 devices, each in its own process with CUDA_VISIBLE_DEVICES set
    to the device it holds; two jobs that overlap in time never share one."""
    import json

    sweep, reports = tmp_path / "sweep", tmp_path / "reports"
    reports.mkdir()
    finish(start_worker(f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=3",
                        "hydra/launcher=devices", "hydra.launcher.devices=[0,1]", "trainer.accelerator=cpu",
                        "+callbacks.report._target_=rank_report.RankReport", env={"RANK_REPORT_DIR": str(reports)}))
    jobs = [json.loads(p.read_text()) for p in reports.glob("*.json")]
    assert len(jobs) == 3 and {j["cuda_visible_devices"] for j in jobs} == {"0", "1"}
    for a in jobs:
        for b in jobs:
            if a is not b and a["started"] < b["ended"] and b["started"] < a["ended"]:
                assert a["cuda_visible_devices"] != b["cuda_visible_devices"]
    import optuna

    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # each job's value came back from its run dir
    assert sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()) == ["0", "1", "2"]


def test_a_storage_lost_mid_sweep_is_one_line_and_keeps_the_finished_trials(start_worker, tmp_path):
    reason = postgres.missing()
    if reason:
        pytest.skip(reason)
    import optuna

    with postgres.server() as server:
        url = server.url.replace("postgres@", "postgres:pw@")  # trust authentication: any password passes
        args = (f"hydra.sweep.dir={tmp_path / 'sweep'}", f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=3",
                "+callbacks.mark._target_=mark_training.MarkTraining")
        worker = start_worker(*args, env={"MARK_AT_STEP": "1", "MARK_FILE": str(tmp_path / "mark"),
                                          "SLOW_STEP_S": "2"})
        deadline, watch = time.monotonic() + 180, optuna.storages.RDBStorage(server.url)  # one connection pool
        while not any(t.state.name == "COMPLETE" for t in _trials(watch)):
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[0][-3000:]
            time.sleep(0.3)
        watch.engine.dispose()
        server.stop()  # while the second trial trains
        out = worker.communicate(timeout=180)[0]
        assert worker.returncode == 1 and "Traceback" not in out and ":pw@" not in out, out[-3000:]
        assert "lost the Optuna storage postgresql://postgres:***@localhost" in out
        server.start()
        trials = optuna.load_study(study_name="shared", storage=server.url).trials
        assert trials[0].state.name == "COMPLETE" and trials[0].value is not None  # kept


def _trials(storage) -> list:
    import optuna

    try:
        return optuna.load_study(study_name="shared", storage=storage).trials
    except KeyError:  # the worker has not created the study yet
        return []
