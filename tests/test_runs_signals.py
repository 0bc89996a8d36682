"""The run lifecycle's interrupt tests (issue 12, problems 2, 3 and 7): a real ``cnf fit``
subprocess, a second fit of the same run while it trains, SIGINT and ``kill -9``.

Kept apart from tests/test_runs.py because they send signals: tests/conftest.py marks a
module that imports :mod:`signal` ``serial``, so ``make test`` runs these in one process
after the parallel pass, and the rest of the run-lifecycle tests run in parallel.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnf.cli import run
from cnf.rundir import RunDir, RunLockedError

from .helpers import REPO, run_cli
from .test_runs import FAST, TOY, kind, rows


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled", OMP_NUM_THREADS="1")


def _start_fit(root: Path, name: str, *extra: str) -> subprocess.Popen:
    """``cnf fit`` in a subprocess of its own session (a signal to it reaches no one else)."""
    cmd = [sys.executable, "-m", "cnf", "fit", "--config", TOY, "--run.root", str(root),
           "--run.name", name, "--run.wandb", "disabled", "--run.progress", "lines",
           "--run.progress_every", "5", "--trainer.max_steps", "100000",
           "--data.init_args.n_train", "2000", "--data.init_args.batch_size", "128", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, done, timeout: float = 300) -> None:
    """Wait until ``done()`` while the subprocess runs."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        if done():
            return
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("the fit subprocess made no progress")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A fit subprocess; while it trains a second fit of the same run is tried (problem 2);
    then SIGINT (problem 7). Returns (root, run, second fit's error, returncode, stderr)."""
    root = tmp_path_factory.mktemp("interrupted")
    run_ = RunDir(root / "runs" / "toy_realnvp" / "b")
    proc = _start_fit(root / "runs", "b", "--trainer.log_every_n_steps", "5",
                      "--trainer.val_check_interval", "20", "--trainer.limit_val_batches", "1")
    try:
        _wait_for(proc, lambda: run_.read_summary().get("steps", 0) >= 20)  # a validation
        with pytest.raises(RunLockedError) as second:
            run_cli(root, "fit", "toy_realnvp", *FAST, name="b")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = {"summary": run_.read_summary(), "rows": rows(run_.path),
             "ckpt_step": torch.load(run_.checkpoint("last"), map_location="cpu",
                                     weights_only=True)["global_step"]}
    return root, run_, second.value, proc.returncode, err, state


# 2 ------------------------------------------------------------------------------------------
@pytest.mark.serial  # a fit subprocess and a signal
def test_2_a_second_fit_of_a_running_run_is_refused(interrupted):
    _, run_, second, _, _, _ = interrupted
    assert "being written by process" in str(second)
    lock_pid = str(second).split("process ")[1].split()[0]
    assert lock_pid.isdigit() and int(lock_pid) != os.getpid()
    assert not run_.lock_path.exists(), "the lock outlived its process"


# 3 ------------------------------------------------------------------------------------------
@pytest.mark.serial  # a fit subprocess and a signal
def test_3_resume_appends_metrics_and_accumulates_time(interrupted):
    _, run_, _, _, _, state = interrupted
    first = state["summary"]
    stopped = first["steps"]
    before = state["rows"]
    assert rows(run_.path)[:len(before)] == before
    cli = run(["fit", "--resume", str(run_.path), "--trainer.max_steps", str(stopped + 30),
               "--run.test_after_fit", "false", "--trainer.enable_progress_bar", "false"])
    assert cli.run_dir == run_.path and cli.trainer.global_step == stopped + 30
    after = rows(run_.path)
    assert after[:len(before)] == before, "rows of the first segment changed"
    keys = [(r["step"], kind(r)) for r in after]
    assert len(keys) == len(set(keys)), "a row was logged twice"
    new_train = sorted(int(r["step"]) for r in after[len(before):] if kind(r) == "train/")
    assert new_train and new_train[0] >= stopped
    s = run_.read_summary()
    assert s["status"] == "finished" and s["steps"] == stopped + 30
    assert [g["segment"] for g in s["segments"]] == [1, 2]
    assert s["segments"][1]["start_step"] == stopped
    assert s["wall_time_s"] > first["wall_time_s"]
    assert s["s_per_step"] == pytest.approx(s["wall_time_s"] / s["steps"], rel=1e-3)
    assert (run_.path / "config.segment2.yaml").exists()


# 7 ------------------------------------------------------------------------------------------
@pytest.mark.serial  # a fit subprocess and a signal
def test_7_sigint_saves_last_ckpt_at_that_step_and_marks_the_run_interrupted(interrupted):
    _, run_, _, code, err, state = interrupted
    assert code == 128 + signal.SIGINT, err[-2000:]
    s = state["summary"]
    assert s["status"] == "interrupted", s
    assert state["ckpt_step"] == s["steps"] > 0
    assert f"saved {run_.checkpoint('last')} at step {s['steps']}" in err
    assert f"cnf fit --resume {run_.path}" in err
    assert "test/nll" not in s["metrics"], "an interrupted fit must not run the test"


@pytest.mark.slow
@pytest.mark.serial  # a fit subprocess and a signal
def test_7_kill_9_leaves_an_unfinished_run_that_the_report_lists(tmp_path):
    from cnf.report import write_report
    from cnf.report.runs import load_runs

    run_ = RunDir(tmp_path / "runs" / "toy_realnvp" / "k")
    # no validation before the kill: only the timed last.ckpt (every 0.6 s) is on disk
    proc = _start_fit(tmp_path / "runs", "k", "--trainer.val_check_interval", "100000",
                      "--run.checkpoint_every_minutes", "0.01", "--trainer.log_every_n_steps", "5",
                      "--trainer.limit_val_batches", "1")
    try:
        _wait_for(proc, lambda: run_.checkpoint("last").exists())
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert run_.read_summary()["status"] == "running"
    assert run_.state == "unfinished"
    assert torch.load(run_.checkpoint("last"), weights_only=True)["global_step"] > 0
    (listed,) = load_runs(tmp_path / "runs")
    assert listed.status == "unfinished"
    md = write_report(tmp_path / "runs", tmp_path / "rep")["markdown"].read_text()
    section = md.split("## Unfinished and interrupted runs")[1].split("\n## ")[0]
    assert f"cnf fit --resume {run_.path}" in section
