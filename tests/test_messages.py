"""What a run says and records when something is wrong: a mistyped top-level key (``seed=abc``), a log-scale
sweep from 0, a failed Optuna trial's reason, the mode of checkpoint files, and a TSV too small to train on
(or whose first line is a header). The command-line messages are cases of tests/test_bad_input.py too."""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from pathlib import Path

import cli_fork
import pytest
from omegaconf import OmegaConf
from runs import ENV, SEQ2SEQ

from aigc_lab.errors import ConfigError, CorpusError, UserError


# ---------------------------------------------------------------- top-level keys (utils/config_check.py)
@pytest.mark.parametrize(("key", "value", "message"), [
    ("seed", "abc", "seed: expected an integer or null (e.g. seed=42), got 'abc' (str)"),
    ("seed", 1.5, "seed: expected an integer or null (e.g. seed=42), got 1.5 (float)"),
    ("seed", True, "seed: expected an integer or null (e.g. seed=42), got True (bool)"),
    ("train", "yes", "train: expected true or false, got 'yes' (str)"),
    ("optimized_metric", 3, "optimized_metric: expected a metric name (e.g. val/loss) or null, got 3 (int)"),
])
def test_top_level_key_of_the_wrong_kind(key, value, message):
    from aigc_lab.utils.config_check import check_targets

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_targets(OmegaConf.create({"seed": 42, key: value}))


def test_top_level_keys_of_the_right_kind():
    from aigc_lab.utils.config_check import check_targets

    for seed in (0, 42, None):
        check_targets(OmegaConf.create({"seed": seed, "train": True, "test": False, "print_config": True,
                                        "ckpt_path": None, "optimized_metric": "val/loss"}))


# ---------------------------------------------------------------- sweeps (hydra_plugins/aigc_lab_sweeper)
def _space(*overrides: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.aigc_lab_sweeper._space import search_space

    return search_space(OverridesParser.create().parse_overrides(list(overrides)))


@pytest.mark.parametrize(("sweep", "message"), [
    ("lr=tag(log, interval(0, 1e-3))",
     "lr=tag(log, interval(0, 1e-3)): a log scale needs a lower bound > 0, got 0.0. Fix: start it above 0, "
     "e.g. lr=tag(log, interval(1e-06, 0.001)), or drop the log tag"),
    ("lr=tag(log, interval(-1, 1))", "a log scale needs a lower bound > 0, got -1.0"),
    ("width=tag(log, int, interval(0, 64))",
     "width=tag(log, int, interval(0, 64)): a log scale of integers needs a lower bound >= 1, got 0. Fix: start it "
     "at 1 or more, e.g. width=tag(log, int, interval(1, 64)), or drop the log tag"),
    ("depth=tag(log, range(0, 8))", "a log scale of integers needs a lower bound >= 1, got 0"),
    ("lr=interval(1e-2, 1e-4)", "lr=interval(1e-2, 1e-4): `low <= high` must hold, but got (low=0.01, high=0.0001)."),
    ("depth=range(5, 1)", "depth=range(5, 1): empty range(5, 1, 1)"),
])
def test_bad_search_space_is_one_line_naming_the_parameter(sweep, message):
    from hydra_plugins.aigc_lab_sweeper._errors import SweepError

    with pytest.raises(SweepError) as err:
        _space(sweep)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, UserError)


def test_refused_sweep_prints_one_line_and_writes_nothing(tmp_path, data_dir):
    env = {**ENV, "AIGC_DATA_DIR": str(data_dir), "AIGC_CACHE_DIR": str(tmp_path / "cache"),
           "PROJECT_ROOT": str(tmp_path)}
    proc = cli_fork.run("aigc_lab", ["hparams_search=mlm_optuna", "model.lr=tag(log, interval(0, 1e-3))"], env,
                        tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "model.lr=tag(log, interval(0, 1e-3)): a log scale needs a lower bound > 0, got 0.0" in proc.stderr
    assert "Traceback" not in proc.stderr and "must hold" not in proc.stderr  # not optuna's own words
    assert not (tmp_path / "outputs").exists()  # no sweep dir, no study


def _job(tmp_path: Path, status: str | None, value):
    from hydra.core.utils import JobReturn, JobStatus

    run_dir = tmp_path / "0"
    run_dir.mkdir()
    if status is not None:
        (run_dir / "STATUS").write_text(status)
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}})
    return JobReturn(status=JobStatus.COMPLETED, _return_value=value, hydra_cfg=hydra_cfg)


@pytest.mark.parametrize(("status", "value", "error"), [
    ("failed\nmodel.lr must be positive, got -1.0\n", math.nan, "model.lr must be positive, got -1.0"),
    ("failed\ndiverged: val/bleu = nan\n", math.nan, "diverged: val/bleu = nan"),
    ("failed\n", math.nan, "failed (no reason recorded)"),
    (None, math.nan, "returned nan"),  # no STATUS: what the job returned is all there is
    ("done\n", None, "returned None, not a number (is optimized_metric set?)"),
])
def test_failed_trial_records_the_reason_of_its_run_dir(tmp_path, status, value, error):
    import optuna

    from hydra_plugins.aigc_lab_sweeper.sweeper import tell

    study = optuna.create_study()
    trial = study.ask()
    tell(study, trial, _job(tmp_path, status, value))
    assert study.trials[0].state.name == "FAIL" and study.trials[0].user_attrs["error"] == error


def test_optuna_sweep_records_why_a_trial_failed(tmp_path, data_dir):
    """Through the real sweeper and launcher: the job marks its run dir failed, the study says why."""
    import optuna

    sweep = tmp_path / "sweep"
    env = {**ENV, "AIGC_DATA_DIR": str(data_dir), "AIGC_CACHE_DIR": str(tmp_path / "cache"),
           "PROJECT_ROOT": str(tmp_path)}
    args = ["-m", *SEQ2SEQ, "hparams_search=seq2seq_optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=1",
            "hydra.sweeper.study_name=s", "model.lr=interval(-2, -1)", "print_config=false"]
    proc = cli_fork.run("aigc_lab", args, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    assert trial.state.name == "FAIL"
    assert "lr must be positive, got -1." in trial.user_attrs["error"]
    assert (sweep / "0" / "STATUS").read_text() == f"failed\n{trial.user_attrs['error']}\n"


# ---------------------------------------------------------------- checkpoint files (checkpoint_io.py)
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_checkpoints_follow_the_umask_like_every_other_file(tmp_path, umask):
    from aigc_lab.checkpoint_io import atomic_save

    before = os.umask(umask)
    try:
        atomic_save({"w": 1}, tmp_path / "last.ckpt")
        atomic_save({"w": 2}, tmp_path / "last.ckpt")  # replaced: the new file's mode
        (tmp_path / "STATUS").write_text("done\n")  # any other file of a run dir
    finally:
        os.umask(before)
    mode = stat.S_IMODE((tmp_path / "last.ckpt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "STATUS").stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["STATUS", "last.ckpt"]  # no temp file left


# ---------------------------------------------------------------- TSV files (data/parallel.py)
def _dm(corpus: dict[str, Path], cache: Path, **kw):
    from aigc_lab.data.parallel import ParallelDataModule

    args = dict(train_file=str(corpus["train"]), val_file=str(corpus["val"]), test_file=None, vocab_size=320,
                max_len=64, max_tokens=512, eval_max_tokens=1024, cache_dir=str(cache))
    return ParallelDataModule(**{**args, **kw})


def test_header_only_tsv_is_refused_before_any_tokenizer(tsv_corpus, tmp_path, caplog):
    header = tmp_path / "header.tsv"
    header.write_text("source\ttarget\n", encoding="utf-8")
    dm = _dm(tsv_corpus, tmp_path / "cache", train_file=str(header))
    with pytest.raises(CorpusError) as err, caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert str(err.value) == (f"{header} (data.train_file) holds only 1 pair: less than one training batch "
                              f"(data.max_tokens=512 padded tokens), so every step would repeat the same batch. "
                              f"Fix: give data.train_file many more pairs")
    assert isinstance(err.value, UserError)
    assert not (tmp_path / "cache").exists()  # refused before a tokenizer was trained and cached
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (f"{header} (data.train_file): the first pair 'source\\ttarget' looks like a header of column "
                       f"names; it is trained on as a pair: delete that line if it is one")


def test_train_split_within_one_batch_is_refused(tsv_corpus, tmp_path):
    """Five short pairs: too many for the bound known before tokenizing, within one batch once tokenized."""
    few = tmp_path / "few.tsv"
    few.write_text("".join(tsv_corpus["val"].read_text(encoding="utf-8").splitlines(keepends=True)[:5]))
    dm = _dm(tsv_corpus, tmp_path / "cache", train_file=str(few), max_len=128, max_tokens=1024)
    dm.prepare_data()  # 5 pairs of up to 2 * 128 tokens could fill more than 1024
    with pytest.raises(CorpusError, match=re.escape(f"{few} (data.train_file) holds only 5 pairs: less than one "
                                                    f"training batch (data.max_tokens=1024 padded tokens)")):
        dm.setup("fit")


def test_synthetic_train_split_within_one_batch_is_refused(tmp_path):
    from aigc_lab.data.parallel import ParallelDataModule

    dm = ParallelDataModule(task="synthetic", max_len=16, max_tokens=2048, synthetic_train_size=3,
                            cache_dir=str(tmp_path))
    with pytest.raises(CorpusError, match=re.escape("the synthetic train split (data.synthetic_train_size) holds "
                                                    "only 3 pairs") + ".*Fix: raise data.synthetic_train_size"):
        dm.setup("fit")


def test_header_line_is_warned_about_in_one_line(tsv_corpus, tmp_path, caplog):
    train = tmp_path / "train.tsv"
    train.write_text("en\tfr\n" + tsv_corpus["train"].read_text(encoding="utf-8"), encoding="utf-8")
    dm = _dm(tsv_corpus, tmp_path / "cache", train_file=str(train))
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
        dm.setup("fit")
    headers = [r.getMessage() for r in caplog.records if "looks like a header" in r.getMessage()]
    assert headers == [f"{train} (data.train_file): the first pair 'en\\tfr' looks like a header of column names; "
                       f"it is trained on as a pair: delete that line if it is one"]
    assert len(dm.datasets["train"]) == 301  # warned, not dropped


@pytest.mark.parametrize(("pair", "header"), [
    (("source", "target"), True), (("en", "fr"), True), (("English", "French"), True), (("SRC", "TGT"), True),
    (("src_text", "tgt_text"), True), (("en-US", "fr-FR"), True), (("eng", "fra"), True),
    (("the file", "le fichier"), False), (("hello", "bonjour"), False), (("ok", "ok"), False),
    (("source", "the file"), False), (("en", "fichier"), False),
])
def test_looks_like_header(pair, header):
    from aigc_lab.data.parallel import looks_like_header

    assert looks_like_header(pair) is header
