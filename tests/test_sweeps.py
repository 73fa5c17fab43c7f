"""Sweeps through the real command line (grid and Optuna multiruns of tiny seq2seq jobs), and their summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

ENV = {"OMP_NUM_THREADS": "1"}  # tiny ops: one thread, no stalls beside a busy core
FAST = ("experiment=seq2seq_synthetic", "debug=fdr", "data.synthetic_train_size=400", "data.synthetic_val_size=40",
        "data.synthetic_test_size=40", "model.net.n_enc_layers=1", "model.net.n_dec_layers=1",
        "model.net.d_model=32", "model.net.n_heads=2", "model.beam_size=2", "model.max_decode_len=20",
        "print_config=false")


def job_dirs(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if (p / ".hydra").is_dir())


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_summary_files(sweep: Path, n_rows: int) -> list[dict[str, str]]:
    rows = summary_rows(sweep)
    assert len(rows) == n_rows
    table = [line for line in (sweep / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == n_rows + 1  # header + one row per job
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"
    return rows


def hparams_metrics(run: Path) -> set[str]:
    """The metric tags of the run's TensorBoard HPARAMS entry."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    tags: set[str] = set()
    for events in (run / "tensorboard").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        try:
            content = acc.PluginTagToContent("hparams").get("_hparams_/experiment")
        except KeyError:  # an events file without hparams
            continue
        if content:
            tags |= {m.name.tag for m in HParamsPluginData.FromString(content).experiment.metric_infos}
    return tags


def test_grid_multirun_writes_a_summary(run_cli, tmp_path):
    """Two jobs side by side with the joblib launcher (parallel local trials), then one summary."""
    sweep = tmp_path / "grid"
    run_cli("-m", *FAST, "model.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", env=ENV, fork=False)
    assert job_dirs(sweep) == ["0", "1"]
    for job in ("0", "1"):
        assert "hydra_joblib_launcher" in (sweep / job / ".hydra" / "hydra.yaml").read_text()
        assert (sweep / job / "STATUS").read_text().startswith("done")
        assert "val/exact_match" in json.loads((sweep / job / "metrics.json").read_text())
    rows = check_summary_files(sweep, 2)
    assert {r["overrides"] for r in rows} == {"model.lr=0.001", "model.lr=0.002"}  # only what the sweep varies
    assert all(r["status"] == "done" and r["val/exact_match"] for r in rows)
    values = [float(r["val/exact_match"]) for r in rows]
    assert values == sorted(values, reverse=True)  # exact match: best (highest) first
    assert {"final/val/exact_match", "final/test/bleu"} <= hparams_metrics(sweep / "0")


def test_grid_multirun_goes_on_after_a_failed_job(run_cli, tmp_path):
    sweep = tmp_path / "grid_fail"
    run_cli("-m", *FAST, "model.lr=-1,-2", f"hydra.sweep.dir={sweep}", env=ENV)  # exit 0: the sweep finished
    for job in ("0", "1"):
        status = (sweep / job / "STATUS").read_text()
        assert status.startswith("failed\n") and "lr must be positive" in status
    rows = check_summary_files(sweep, 2)
    assert [r["status"] for r in rows] == ["failed", "failed"] and "lr must be positive" in rows[0]["detail"]


def optuna_args(sweep: Path, n_trials: int) -> tuple[str, ...]:
    return ("-m", *FAST, "hparams_search=seq2seq_optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.study_name=s2s",
            f"hydra.sweeper.n_trials={n_trials}")


def test_optuna_sweep_records_a_failed_trial(run_cli, tmp_path):
    import optuna

    sweep = tmp_path / "optuna"
    sweep.mkdir()
    storage = f"sqlite:///{sweep / 'optuna.db'}"  # the sweeper's default storage for this sweep dir
    study = optuna.create_study(study_name="s2s", storage=storage, direction="maximize")
    study.enqueue_trial({"model.lr": -1.0})  # trial 0 gets a learning rate the system refuses
    # a command-line sweep replaces the configured one (a log interval cannot hold the -1 above)
    proc = run_cli(*optuna_args(sweep, 3), "model.lr=interval(1e-3, 3e-3)", env=ENV)
    assert "Trial 0 failed" in proc.stdout + proc.stderr

    trials = optuna.load_study(study_name="s2s", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert set(trials[1].params) == {"model.lr", "model.warmup_ratio", "model.label_smoothing", "model.net.dropout"}
    assert job_dirs(sweep) == ["0", "1", "2"]  # job N is trial N
    assert "lr must be positive" in (sweep / "0" / "STATUS").read_text()
    rows = check_summary_files(sweep, 3)
    assert [r["status"] for r in rows] == ["done", "done", "failed"] and rows[2]["job"] == "0"
    assert "model.lr=-1.0" in rows[2]["overrides"] and "val/bleu" in rows[0]


def test_optuna_study_resumes(run_cli, tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    sweep = tmp_path / "resume"
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    run_cli(*optuna_args(sweep, 1), env=ENV)
    first = optuna.load_study(study_name="s2s", storage=storage).trials[0]
    # a trial left running, as by an interrupted sweep: its parameters must run again
    study = optuna.load_study(study_name="s2s", storage=storage)
    cut = study.ask({"model.lr": FloatDistribution(1e-3, 2e-3, log=True)})

    run_cli(*optuna_args(sweep, 2), env=ENV)  # one more counted trial: the re-run of the cut one
    trials = optuna.load_study(study_name="s2s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[0].params == first.params and trials[0].value == first.value  # the earlier trial, kept
    assert trials[2].params["model.lr"] == cut.params["model.lr"] and trials[2].user_attrs["requeued_from"] == 1
    assert job_dirs(sweep) == ["0", "2"]
    check_summary_files(sweep, 2)


# ---------------------------------------------------------------- units: summary writer, search space, tell
def fake_job(sweep: Path, name: str, overrides: list[str], status: str | None, metrics: dict | None) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if status is not None:
        (job / "STATUS").write_text(status)
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_summary_of_fake_job_dirs(tmp_path):
    from aigc_lab.sweep_summary import summarize

    sweep = tmp_path / "sweep"
    fake_job(sweep, "0", ["experiment=x", "model.lr=0.001", "opt=adam"], "done\n", {"val/loss": 2.0, "test/loss": 2.1})
    fake_job(sweep, "1", ["experiment=x", "model.lr=0.01", "opt=sgd"], "failed\nlr too high\n", None)
    fake_job(sweep, "2", ["experiment=x", "model.lr=0.1", "opt=adam"], "done\n", {"val/loss": 1.5, "test/loss": 1.6})
    fake_job(sweep, "10", ["experiment=x", "model.lr=1.0", "opt=sgd"], None, None)  # died before a word
    (sweep / "not_a_job").mkdir()

    assert [p.name for p in summarize(sweep, "val/loss", "minimize")] == ["summary.csv", "summary.md", "summary.png"]
    rows = check_summary_files(sweep, 4)
    assert [r["job"] for r in rows] == ["2", "0", "1", "10"]  # best first, then failed/unknown in job order
    assert rows[0]["overrides"] == "model.lr=0.1 opt=adam"  # experiment=x is the same everywhere: left out
    assert rows[0]["val/loss"] == "1.5" and rows[0]["test/loss"] == "1.6"
    assert (rows[2]["status"], rows[2]["val/loss"], rows[2]["detail"]) == ("failed", "", "lr too high")
    assert rows[3]["status"] == "unknown"
    assert "val/loss (minimize), 4 jobs" in (sweep / "summary.md").read_text()

    summarize(sweep, "val/loss", "maximize")
    assert [r["job"] for r in summary_rows(sweep)] == ["0", "2", "1", "10"]


def test_direction_from_the_config():
    from omegaconf import OmegaConf

    from aigc_lab.sweep_summary import direction_of

    checkpoint = {"optimized_metric": "val/bleu", "callbacks": {"model_checkpoint": {"monitor": "val/bleu",
                                                                                      "mode": "max"}}}
    assert direction_of(OmegaConf.create(checkpoint)) == "maximize"
    assert direction_of(OmegaConf.create({**checkpoint, "hydra": {"sweeper": {"direction": "minimize"}}})) == "minimize"
    assert direction_of(OmegaConf.create({"optimized_metric": "val/fid"})) == "minimize"


def test_search_space_from_hydra_sweep_syntax():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.aigc_lab_sweeper._space import search_space

    overrides = OverridesParser.create().parse_overrides([
        "experiment=x", "lr=tag(log, interval(1e-4, 1e-2))", "width=tag(int, interval(16, 64))",
        "depth=range(1, 8, 2)", "act=choice(relu, 'gelu new', 0.5)", "wd=interval(0, 1)", "wd=0.1"])
    space = search_space(overrides)
    assert space.distributions == {"lr": FloatDistribution(1e-4, 1e-2, log=True), "width": IntDistribution(16, 64),
                                   "depth": IntDistribution(1, 7, step=2),
                                   "act": CategoricalDistribution(["relu", "gelu new", 0.5])}
    assert space.fixed == ["experiment=x", "wd=0.1"]  # a later plain value pins a swept key
    assert space.overrides({"lr": 0.001, "width": 32, "depth": 3, "act": "gelu new"}) == [
        "experiment=x", "wd=0.1", "lr=0.001", "width=32", "depth=3", "act=gelu\\ new"]


@pytest.mark.parametrize(("experiment", "search", "metric", "direction"), [
    ("gan_mnist", "gan_optuna", "val/fid", "minimize"),
    ("mlm_pydocs", "mlm_optuna", "val/perplexity", "minimize"),
    ("mlm_tiny", "mlm_optuna", "val/perplexity", "minimize"),
    ("seq2seq_en_fr", "seq2seq_optuna", "val/bleu", "maximize"),
    ("seq2seq_synthetic", "seq2seq_optuna", "val/bleu", "maximize"),
])
def test_hparams_search_configs(experiment, search, metric, direction):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from aigc_lab.utils.paths import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"hparams_search={search}"],
                      return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("AigcOptunaSweeper") and cfg.optimized_metric == metric
    assert sweeper.direction == direction and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    for key in sweeper.params:  # every searched key exists in the experiment's config: no typo
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key


@pytest.mark.parametrize(("outcome", "state"), [(0.5, "COMPLETE"), (float("nan"), "FAIL"), (None, "FAIL"),
                                                (RuntimeError("boom"), "FAIL")])
def test_tell_fails_trials_that_raise_or_return_no_number(outcome, state):
    import optuna
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.aigc_lab_sweeper.sweeper import tell

    study = optuna.create_study()
    trial = study.ask()
    status = JobStatus.FAILED if isinstance(outcome, Exception) else JobStatus.COMPLETED
    tell(study, trial, JobReturn(status=status, _return_value=outcome))
    assert study.trials[0].state.name == state
    assert ("error" in study.trials[0].user_attrs) == (state == "FAIL")
