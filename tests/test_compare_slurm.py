"""`cnf compare --launcher slurm` (cnf/compare/slurm.py), run through submitit's local
executor: one job per run, the same skip logic, outcomes and keys recorded."""

import json
import sys
from pathlib import Path

import pytest

from cnf.compare import run_suite
from cnf.compare.keys import run_key
from cnf.compare.suite import Member, Suite
from cnf.errors import ConfigError
from cnf.rundir import RunDir

submitit = pytest.importorskip("submitit")

from cnf.compare.slurm import SubmititLauncher, slurm_parameters  # noqa: E402


def _suite(tmp_path: Path, **resources) -> Suite:
    return Suite(name="jobs", path=tmp_path / "s.yaml", description="", members=[],
                 data=[None], seeds=[0], root=tmp_path / "runs", max_steps=50,
                 resources=resources)


def _member(suite: Suite, i: int, fail: bool = False) -> Member:
    """A 'run' that records the process it ran in, then finishes (or fails)."""
    run_dir = suite.runs_dir / f"m{i}"
    code = ("import os, sys; from cnf.rundir import RunDir; r = RunDir(sys.argv[1]);"
            "r.path.mkdir(parents=True);"
            + ("print('cnf: error: broken on purpose'); sys.exit(2)" if fail else
               "r.write_summary({'status': 'finished', 'job': os.environ.get("
               "'SUBMITIT_LOCAL_JOB_ID')}); print('[fit] done')"))
    cmd = [sys.executable, "-c", code, str(run_dir), "fit"]
    return Member(label=f"m{i}", config="x", data=None, data_config=None, seed=0,
                  run_name=f"m{i}", run_dir=str(run_dir), command=cmd,
                  key=run_key(suite, cmd).as_dict())


def test_resources_become_submitit_parameters():
    params = slurm_parameters({"gpus": 2, "cpus": 8, "mem_gb": 32, "tasks_per_node": 2,
                               "account": "lab", "qos": "high", "slurm": {"exclude": "n1"}},
                              max_time="00:01:00:00")
    assert params == {"timeout_min": 70, "gpus_per_node": 2, "cpus_per_task": 8,
                      "mem_gb": 32, "tasks_per_node": 2, "slurm_account": "lab",
                      "slurm_qos": "high", "slurm_exclude": "n1"}
    with pytest.raises(ConfigError, match="resources: {time: 2h}"):
        slurm_parameters({"gpus": 1})  # SLURM's default limit would kill runs mid-way
    # submitit itself accepts every name (it checks slurm_* names on any cluster)
    executor = submitit.AutoExecutor(folder="unused", cluster="debug")
    executor.update_parameters(**params)


def test_unknown_slurm_parameter_is_a_config_error(tmp_path):
    suite = _suite(tmp_path, time="10m", slurm={"no_such_option": 1})
    with pytest.raises(ConfigError, match="submitit refused the resources"):
        SubmititLauncher(suite, "local")


@pytest.mark.slow
def test_one_job_per_run_with_skip_and_failure(tmp_path, capsys):
    suite = _suite(tmp_path, time="10m")
    members = [_member(suite, 0), _member(suite, 1), _member(suite, 2, fail=True)]
    launcher = SubmititLauncher(suite, "local", poll_s=0.2)
    run_suite(suite, members, launcher=launcher)
    assert [m.status for m in members] == ["finished", "finished", "failed"]
    assert "broken on purpose" in members[2].error
    # each run was its own submitit job, and the job wrote the run's key
    jobs = {RunDir(m.run_dir).read_summary()["job"] for m in members[:2]}
    assert jobs == {members[0].job_id, members[1].job_id} and len(jobs) == 2
    assert RunDir(members[0].run_dir).read_summary()["suite_key"] == members[0].key
    assert "[fit] done" in Path(members[0].log).read_text()
    state = json.loads((suite.runs_dir / "suite.json").read_text())
    assert [m["job_id"] for m in state["members"]] == [m.job_id for m in members]
    out = capsys.readouterr().out
    assert "one job per run on submitit's local executor" in out
    assert f"submitted job {members[0].job_id}" in out and "FAILED" in out

    # again: the finished runs are skipped without a job; the failed one is a new job
    again = [_member(suite, 0), _member(suite, 1), _member(suite, 2, fail=True)]
    run_suite(suite, again, launcher=SubmititLauncher(suite, "local", poll_s=0.2))
    assert [m.status for m in again] == ["skipped", "skipped", "failed"]
    assert again[0].job_id is None and again[2].job_id not in (None, members[2].job_id)
    assert (suite.runs_dir / ".attempts").is_dir()  # the failed attempt was kept


def test_no_wait_submits_and_returns(tmp_path):
    suite = _suite(tmp_path, time="10m")
    members = [_member(suite, 0)]
    run_suite(suite, members, launcher=SubmititLauncher(suite, "local", wait=False),
              out=sys.stderr)
    assert members[0].status == "submitted" and members[0].job_id


def test_rerun_waits_for_a_job_still_running_instead_of_submitting_again(tmp_path, monkeypatch):
    suite = _suite(tmp_path, time="10m")
    first = [_member(suite, 0)]
    first[0].command = [sys.executable, "-c", "import time; time.sleep(2)"]
    run_suite(suite, first, launcher=SubmititLauncher(suite, "local", wait=False),
              out=sys.stderr)
    RunDir(first[0].run_dir).path.mkdir(parents=True)  # the job has started writing its run

    class StillRunning:  # what SLURM reports for that job now, and later its result
        state, polls = "RUNNING", 0

        def done(self):
            self.polls += 1
            return self.polls > 2

        def result(self):
            RunDir(first[0].run_dir).write_summary({"status": "finished"})
            return {"returncode": 0, "elapsed_s": 1.0, "error": None}

    job = StillRunning()
    launcher = SubmititLauncher(suite, "local", poll_s=0.05)
    monkeypatch.setattr(launcher, "_job", lambda job_id: job)
    monkeypatch.setattr(launcher.executor, "submit", lambda *a, **k: pytest.fail("resubmitted"))
    again = [_member(suite, 0)]
    run_suite(suite, again, launcher=launcher, out=sys.stderr)
    assert again[0].status == "finished" and again[0].job_id == first[0].job_id
    assert job.polls == 3 and not (suite.runs_dir / ".attempts").exists()


@pytest.mark.slow
def test_cli_runs_a_real_member_as_a_job(tmp_path, monkeypatch, capsys):
    """`cnf compare --launcher submitit-local`: a real 30-step `cnf fit` in a job."""
    from cnf.compare import main
    from tests.conftest import tiny_suite_files

    monkeypatch.chdir(tmp_path)
    suite_file = tiny_suite_files(tmp_path)
    suite_file.write_text(suite_file.read_text() + "resources: {time: 20m, cpus: 1}\n")
    assert main([str(suite_file), "--only", "suite_small", "--launcher", "submitit-local",
                 "--no-report"]) == 0
    run = RunDir(tmp_path / "runs" / "suite" / "small-8gaussians-s0")
    summary = run.read_summary()
    assert run.is_finished and summary["steps"] == 30 and summary["suite_key"]["max_steps"] == 30
    assert "1/1 runs finished" in capsys.readouterr().out


def test_local_launcher_refuses_runs_submitted_as_jobs(tmp_path):
    suite = _suite(tmp_path, time="10m")
    members = [_member(suite, 0)]
    members[0].command = [sys.executable, "-c", "import time; time.sleep(2)"]
    run_suite(suite, members, launcher=SubmititLauncher(suite, "local", wait=False),
              out=sys.stderr)
    with pytest.raises(ConfigError, match=rf"m0 \(job {members[0].job_id}\).*--launcher slurm"):
        run_suite(suite, [_member(suite, 0)], out=sys.stderr)
