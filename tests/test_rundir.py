"""cnf.rundir: layout, atomic summary writes, run discovery."""

import json

from cnf.rundir import FINISHED, RUNNING, RunDir, find_runs, run_dir_of_checkpoint


def test_summary_roundtrip_and_status(tmp_path):
    run = RunDir(tmp_path / "exp" / "r1")
    assert run.read_summary() == {} and run.status is None and not run.is_run
    run.write_summary({"status": RUNNING, "x": 1})
    assert run.status == RUNNING and not run.is_finished and run.is_run
    run.update_summary(status=FINISHED)
    assert run.is_finished and json.loads(run.summary_path.read_text())["x"] == 1
    assert not list(run.path.glob(".*.tmp")), "temporary file left behind"


def test_corrupt_summary_reads_empty(tmp_path):
    run = RunDir(tmp_path)
    run.summary_path.write_text("{not json")
    assert run.read_summary() == {}


def test_find_runs_skips_evaluations(tmp_path):
    a, b = RunDir(tmp_path / "e" / "a"), RunDir(tmp_path / "e" / "b")
    for r in (a, b):
        r.write_summary({"status": FINISHED})
    RunDir(a.evals / "moons").write_summary({"status": FINISHED})
    assert [r.path for r in find_runs(tmp_path)] == [a.path, b.path]


def test_checkpoint_belongs_to_run(tmp_path):
    run = RunDir(tmp_path / "r")
    run.checkpoints.mkdir(parents=True)
    run.checkpoint("last").write_bytes(b"")
    assert run_dir_of_checkpoint(run.checkpoint("last")) is None  # no record yet
    run.write_summary({"status": RUNNING})
    assert run_dir_of_checkpoint(run.checkpoint("last")).path == run.path.resolve()
    assert run.best_or_last_checkpoint() == run.checkpoint("last")
