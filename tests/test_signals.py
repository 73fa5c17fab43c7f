"""SIGTERM and Ctrl+C in every stage, not only between training batches (utils/signals.py), and runs left
``running`` by a process that is gone (utils/stale_runs.py).

The CLI tests start the real command in a subprocess and signal it once it has reached a stage: a real slow stage
(the tokenizer training on a 16 MB corpus), or one stalled by tests/stall.py, which replaces a function by one
that touches a marker file and then stalls, in Python (many short sleeps: a slow batch) or in one long native
torch operation (where no Python signal handler can run). Each measures the time from the signal to the exit."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli_fork
import pytest
from conftest import make_corpus, run_dirs
from runs import ENV, GAN, status

from aigc_lab.sweep_summary import collect_jobs
from aigc_lab.utils.stale_runs import mark_if_killed, process_gone, process_line, start_ticks

TESTS = Path(__file__).parent
STALL = str(TESTS / "stall.py")
HONOURED_S = 10.0  # every signal is acted on within this
AT_ONCE_S = 3.0  # a second signal: the exit, whatever the main thread is doing


def child_env(tmp_path: Path, data_dir: Path, cache_dir: Path) -> dict[str, str]:
    return {**os.environ, **ENV, "AIGC_DATA_DIR": str(data_dir), "AIGC_CACHE_DIR": str(cache_dir),
            "PROJECT_ROOT": str(tmp_path)}


class Command:
    """A CLI process in ``cwd`` with its output in files (a full pipe would block it)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.out = cwd / f"out_{time.monotonic_ns()}.txt"
        with self.out.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.out.read_text()

    def wait_until(self, ready, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode} before {what}:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.05)

    def signal_and_time(self, *signals: int, gap: float = 0.5, limit: float = HONOURED_S + 20) -> tuple[int, float]:
        """Send ``signals`` ``gap`` seconds apart; (exit code, seconds from the last signal to the exit)."""
        for i, signum in enumerate(signals):
            if i:
                time.sleep(gap)
            self.proc.send_signal(signum)
        sent = time.monotonic()
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"still running {limit} s after the signal:\n{self.text()[-3000:]}")
        return code, time.monotonic() - sent


def stalled(tmp_path: Path, env: dict[str, str], target: str, how: str, module: str, *args: str) -> Command:
    """``python -m module args`` with ``target`` stalled (tests/stall.py), started and waited for until it stalls."""
    marker = tmp_path / f"stalled_{time.monotonic_ns()}"
    cmd = Command([STALL, target, how, str(marker), module, *args], tmp_path, env)
    cmd.wait_until(marker.exists, f"the stall of {target}")
    return cmd


def detail(run: Path) -> str:
    return (run / "STATUS").read_text().split("\n", 1)[1]


# ---------------------------------------------------------------- the first signal, in every stage
def test_sigterm_while_the_tokenizer_trains_stops_within_10_s(tmp_path, data_dir):
    # A real slow stage: the tokenizers library training in native code on a 16 MB corpus.
    corpus = {"train": make_corpus(tmp_path / "text" / "train.txt", 150_000, 1),
              "val": make_corpus(tmp_path / "text" / "val.txt", 60, 2)}
    args = ("experiment=mlm_tiny", "debug=fdr", f"data.train_files={corpus['train']}",
            f"data.val_files={corpus['val']}", "data.test_files=null")
    cmd = Command(["-m", "aigc_lab", *args], tmp_path, child_env(tmp_path, data_dir, tmp_path / "cache"))
    cmd.wait_until(lambda: "Training a WordPiece tokenizer" in cmd.text(), "the tokenizer training")
    code, took = cmd.signal_and_time(signal.SIGTERM)
    text = cmd.text()
    assert code == 143 and took < HONOURED_S, (code, took, text[-3000:])
    (run,) = run_dirs(tmp_path)
    assert status(run) == "interrupted"
    assert detail(run).startswith("SIGTERM during tokenizer training (data preparation)")
    assert "No checkpoint was saved yet: start the run again" in detail(run)
    assert "Interrupted: SIGTERM during tokenizer training" in text and "Traceback" not in text


def test_sigterm_in_a_long_test_batch_stops_it_within_10_s(tmp_path, data_dir, cache_dir):
    # Lightning waits for the batch boundary; a batch that does not reach it in time is stopped where it is.
    cmd = stalled(tmp_path, child_env(tmp_path, data_dir, cache_dir), "aigc_lab.systems.gan:GANSystem.test_step",
                  "python", "aigc_lab", *GAN)
    code, took = cmd.signal_and_time(signal.SIGTERM)
    text = cmd.text()
    assert code == 143 and took < HONOURED_S, (code, took, text[-3000:])
    (run,) = run_dirs(tmp_path)
    assert status(run) == "interrupted"
    assert detail(run).startswith("SIGTERM during test, stopped mid-batch")
    assert f"checkpoints are intact; test again with: python -m aigc_lab.eval run_dir={run}" in detail(run)
    assert "Traceback" not in text


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl+C")])
def test_a_second_signal_in_a_long_native_op_stops_at_once(signum, code, name, tmp_path, data_dir, cache_dir):
    cmd = stalled(tmp_path, child_env(tmp_path, data_dir, cache_dir), "aigc_lab.systems.gan:GANSystem.training_step",
                  "native", "aigc_lab", *GAN)
    exit_code, took = cmd.signal_and_time(signum, signum)
    assert exit_code == code and took < AT_ONCE_S, (exit_code, took, cmd.text()[-3000:])
    (run,) = run_dirs(tmp_path)
    assert status(run) == "interrupted"
    assert detail(run).startswith(f"stopped at once by a second {name} during the first training step")


def test_one_sigterm_in_a_long_native_op_stops_within_10_s(tmp_path, data_dir, cache_dir):
    cmd = stalled(tmp_path, child_env(tmp_path, data_dir, cache_dir), "aigc_lab.systems.gan:GANSystem.training_step",
                  "native", "aigc_lab", *GAN)
    code, took = cmd.signal_and_time(signal.SIGTERM)
    assert code == 143 and took < HONOURED_S, (code, took, cmd.text()[-3000:])
    (run,) = run_dirs(tmp_path)
    assert status(run) == "interrupted"
    assert detail(run).startswith("SIGTERM during the first training step, still running")


@pytest.fixture(scope="module")
def trained_gan(tmp_path_factory, data_dir, cache_dir) -> tuple[Path, dict[str, str]]:
    """A finished GAN run (its folder, the environment of its command)."""
    root = tmp_path_factory.mktemp("gan")
    env = child_env(root, data_dir, cache_dir)
    proc = cli_fork.run("aigc_lab", list(GAN), env, root, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (run,) = run_dirs(root)
    return run, env


def test_eval_and_generate_stop_within_10_s_and_leave_the_run_as_it_was(trained_gan, tmp_path):
    run, env = trained_gan
    cmd = stalled(tmp_path, env, "aigc_lab.systems.gan:GANSystem.test_step", "python", "aigc_lab.eval",
                  f"run_dir={run}")
    code, took = cmd.signal_and_time(signal.SIGTERM)
    text = cmd.text()
    assert code == 143 and took < HONOURED_S, (code, took, text[-3000:])
    assert "Interrupted: SIGTERM during test" in text and "Traceback" not in text
    assert status(run) == "done" and not list(run.glob("eval_*.json"))

    out = tmp_path / "samples.npy"
    cmd = stalled(tmp_path, env, "aigc_lab.data.mnist:to_uint8", "python", "aigc_lab.generate", f"ckpt_path={run}",
                  "num_samples=20", "batch_size=10", f"out={out}")
    code, took = cmd.signal_and_time(signal.SIGTERM)
    text = cmd.text()
    assert code == 143 and took < HONOURED_S, (code, took, text[-3000:])
    assert "Interrupted: SIGTERM during sampling" in text and "Traceback" not in text
    assert status(run) == "done" and not list(tmp_path.glob("*samples.npy*"))


# ---------------------------------------------------------------- runs whose process is gone
def test_a_run_killed_by_kill_9_is_marked_killed_by_the_next_resume_eval_or_launch(tmp_path, data_dir, cache_dir):
    env = child_env(tmp_path, data_dir, cache_dir)
    cmd = stalled(tmp_path, env, "aigc_lab.systems.gan:GANSystem.test_step", "python", "aigc_lab", *GAN)
    cmd.proc.kill()  # kill -9 in the final test: its checkpoints are saved, its STATUS says running
    cmd.proc.wait()
    (run,) = run_dirs(tmp_path)
    left = (run / "STATUS").read_text()
    assert left.startswith(f"running\npid={cmd.proc.pid} host={platform.node()} ")

    def marked_by(module: str, *args: str, code: int) -> None:
        (run / "STATUS").write_text(left)
        proc = cli_fork.run(module, list(args), env, tmp_path, timeout=600)  # python -m module args, started faster
        assert proc.returncode == code, (proc.stdout + proc.stderr)[-3000:]
        assert status(run) == "killed", (module, args)
        assert detail(run).startswith(f"its process (pid {cmd.proc.pid} on {platform.node()}, running since ")
        assert f"resume from its last checkpoint with: python -m aigc_lab ckpt_path={run}" in detail(run)

    marked_by("aigc_lab", f"ckpt_path={run}", "model.lr=0", code=1)  # a resume refused after the marking
    marked_by("aigc_lab.eval", f"run_dir={run}", code=0)  # (eval changes no STATUS)
    marked_by("aigc_lab", *GAN, "model.lr=0", code=1)  # a new run of the task beside it (that fails)
    assert len(run_dirs(tmp_path)) == 2


def test_liveness_by_pid_start_time_and_host():
    me = dict(item.split("=", 1) for item in process_line().split())
    assert me["pid"] == str(os.getpid()) and me["host"] == platform.node() and me["start"].isdigit()
    assert not process_gone(me)
    assert process_gone({**me, "start": str(int(me["start"]) + 1)})  # the pid of another, later process
    assert not process_gone({**me, "host": "elsewhere"})  # cannot be seen from here: left alone
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    record = {"pid": str(child.pid), "host": platform.node(), "start": str(start_ticks(child.pid))}
    assert not process_gone(record)
    child.kill()
    time.sleep(0.5)
    assert process_gone(record)  # a zombie: dead, its exit code not read yet
    child.wait()
    assert process_gone(record)


def dead_process_line() -> str:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    line = f"pid={child.pid} host={platform.node()} start={start_ticks(child.pid)} since=2026-01-01T00:00:00+00:00"
    child.kill()
    child.wait()
    return line


def test_only_a_running_run_of_a_dead_process_of_this_host_is_marked_killed(tmp_path):
    dead = dead_process_line()
    cases = {"dead": f"running\n{dead}\n", "alive": f"running\n{process_line()}\n", "older": "running\n",
             "elsewhere": f"running\n{dead.replace(platform.node(), 'elsewhere')}\n",
             "done": f"done\n{dead}\n"}
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "STATUS").write_text(text)
        assert bool(mark_if_killed(tmp_path / name)) == (name == "dead"), name
        assert ((tmp_path / name / "STATUS").read_text() == text) == (name != "dead"), name
    assert status(tmp_path / "dead") == "killed"
    assert "no checkpoint was saved: start the run again" in detail(tmp_path / "dead")


def test_the_sweep_summary_reports_a_dead_job_as_killed(tmp_path):
    for job, text in (("0", "done\n"), ("1", f"running\n{dead_process_line()}\n")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- model.lr={job}\n")
        (tmp_path / job / "STATUS").write_text(text)
    assert [job.status for job in collect_jobs(tmp_path)] == ["done", "killed"]
