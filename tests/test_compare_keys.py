"""`cnf compare` keys a finished run by its budget and config hash (cnf/compare/suite.py):
the same key is skipped, another budget or configuration is refused or replaced, never
skipped silently (issue 12, item 9)."""

import sys
from pathlib import Path

import pytest

from cnf.compare import load_suite, main, plan, run_suite
from cnf.compare.keys import CONFLICT, RESUME, SKIP, TODO, classify, config_hash, run_key
from cnf.compare.suite import Member, Suite
from cnf.errors import ConfigError
from cnf.rundir import RunDir
from tests.conftest import tiny_suite_files


def _suite(tmp_path: Path, max_steps: int | None = 100) -> Suite:
    return Suite(name="keys", path=tmp_path / "s.yaml", description="", members=[],
                 data=[None], seeds=[0], root=tmp_path / "runs", max_steps=max_steps)


def _member(suite: Suite, i: int, note: str = "") -> Member:
    """A member whose 'run' writes a finished summary (and counts its starts)."""
    run_dir = suite.runs_dir / f"m{i}"
    code = ("import sys; from cnf.rundir import RunDir; r = RunDir(sys.argv[1]);"
            "r.path.mkdir(parents=True); r.write_summary({'status': 'finished'});"
            "starts = r.path.parent / 'starts'; starts.write_text("
            "(starts.read_text() if starts.exists() else '') + sys.argv[1] + '\\n')")
    cmd = [sys.executable, "-c", code, str(run_dir), "fit", "--note", note]
    return Member(label=f"m{i}", config="x", data=None, data_config=None, seed=0,
                  run_name=f"m{i}", run_dir=str(run_dir), command=cmd,
                  key=run_key(suite, cmd).as_dict())


def _starts(suite: Suite) -> int:
    f = suite.runs_dir / "starts"
    return len(f.read_text().splitlines()) if f.exists() else 0


def test_same_key_skips_another_budget_is_refused_or_replaced(tmp_path, capsys):
    suite = _suite(tmp_path, max_steps=100)
    run_suite(suite, [_member(suite, 0), _member(suite, 1)], echo=False)
    assert _starts(suite) == 2
    assert RunDir(suite.runs_dir / "m0").read_summary()["suite_key"]["max_steps"] == 100

    # same budget and configuration: skipped, no process started
    again = [_member(suite, 0), _member(suite, 1)]
    assert [classify(m)[0] for m in again] == [SKIP, SKIP]
    run_suite(suite, again, echo=False)
    assert _starts(suite) == 2 and [m.status for m in again] == ["skipped"] * 2

    # another budget: refused before anything runs, naming the runs and both budgets
    suite.max_steps = 300
    longer = [_member(suite, 0), _member(suite, 1)]
    assert classify(longer[0]) == (CONFLICT, "finished with max_steps=100; the suite now "
                                             "asks max_steps=300")
    with pytest.raises(ConfigError, match=r"(?s)2 run\(s\).*m0: finished with max_steps=100.*"
                                          r"--root.*--rerun-changed"):
        run_suite(suite, longer, echo=False)
    assert _starts(suite) == 2

    # replace: the old runs move aside, the new ones run and carry the new key
    run_suite(suite, longer, echo=False, replace=True)
    assert _starts(suite) == 4 and [m.status for m in longer] == ["finished"] * 2
    assert RunDir(suite.runs_dir / "m0").read_summary()["suite_key"]["max_steps"] == 300
    old = list((suite.runs_dir / ".attempts").glob("*-superseded"))
    assert len(old) == 2 and all(RunDir(p).is_finished for p in old)
    from cnf.report import load_runs

    assert len(load_runs(suite.runs_dir)) == 2  # the report shows only the current runs


def test_changed_configuration_is_a_conflict_not_a_skip(tmp_path):
    suite = _suite(tmp_path)
    run_suite(suite, [_member(suite, 0, note="a")], echo=False)
    changed = _member(suite, 0, note="b")
    verdict, why = classify(changed)
    assert verdict == CONFLICT and "another configuration" in why


def test_run_without_a_key_is_compared_by_its_configs_budget(tmp_path):
    """A run from before keys existed (or from `cnf fit` itself): its config's budget."""
    suite = _suite(tmp_path, max_steps=100)
    m = _member(suite, 0)
    run = RunDir(m.run_dir)
    assert classify(m)[0] == TODO
    run.path.mkdir(parents=True)
    run.write_summary({"status": "finished"})
    run.config.write_text("trainer:\n  max_steps: 100\n  max_time: null\n")
    assert classify(m)[0] == SKIP
    suite.max_steps = 300
    verdict, why = classify(_member(suite, 0))
    assert verdict == CONFLICT and "max_steps=100" in why and "max_steps=300" in why


def test_config_hash_follows_referenced_files_and_ignores_wandb_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite_file = tiny_suite_files(tmp_path)
    suite = load_suite(suite_file)
    small = [m for m in plan(suite) if "suite_small" in m.config][0]
    h = config_hash(small.command)
    assert config_hash(small.command) == h
    offline = [m for m in plan(suite, wandb="online") if "suite_small" in m.config][0]
    assert config_hash(offline.command) == h  # where a run is logged is not what it trains
    extra = [m for m in plan(suite, extra_args=["--trainer.precision", "bf16-mixed"])
             if "suite_small" in m.config][0]
    assert config_hash(extra.command) != h
    # the member config names tiny_model.yaml: editing that file changes the hash
    model = tmp_path / "configs" / "tiny_model.yaml"
    model.write_text(model.read_text().replace("num_layers: 2", "num_layers: 3"))
    assert config_hash(small.command) != h


def test_dry_run_shows_the_conflict(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    suite_file = tiny_suite_files(tmp_path)
    (first,) = [m for m in plan(load_suite(suite_file)) if "toy_realnvp" in m.config]
    run = RunDir(first.run_dir)
    run.path.mkdir(parents=True)
    run.write_summary({"status": "finished", "suite_key": first.key})
    assert main([str(suite_file), "--dry-run"]) == 0
    assert f"# {first.run_name} (finished, skip)" in capsys.readouterr().out
    assert main([str(suite_file), "--dry-run", "--max-steps", "60"]) == 0
    out = capsys.readouterr().out
    assert f"# {first.run_name} (CONFLICT: finished with max_steps=30; the suite now asks " \
           "max_steps=60)" in out
    with pytest.raises(ConfigError, match="max_steps=30"):
        main([str(suite_file), "--max-steps", "60", "--only", "toy_realnvp", "--no-report"])


class _Recorder:
    """A launcher that records what it was asked to run (and runs nothing)."""

    description, n_workers = "recording", 1

    def __init__(self):
        self.commands: list[list[str]] = []

    def launch(self, todo, state, out):
        self.commands += [m.command for _, m in todo]


def _interrupted_member(suite: Suite) -> Member:
    """A 'run' stopped by a signal: status interrupted, a last.ckpt, exit status 130."""
    m = _member(suite, 0)
    code = ("import sys; from cnf.rundir import RunDir; r = RunDir(sys.argv[1]);"
            "r.checkpoints.mkdir(parents=True); r.checkpoint('last').write_bytes(b'x');"
            "r.write_summary({'status': 'interrupted'}); sys.exit(130)")
    m.command = [sys.executable, "-c", code, m.run_dir, "fit"]
    m.key = run_key(suite, m.command).as_dict()
    return m


def test_interrupted_run_with_the_same_key_is_resumed_in_place(tmp_path, capsys):
    suite = _suite(tmp_path)
    (m,) = run_suite(suite, [_interrupted_member(suite)], echo=False)
    assert m.status == "failed" and RunDir(m.run_dir).status == "interrupted"

    again = _interrupted_member(suite)
    assert classify(again, {"key": again.key})[0] == RESUME
    launcher = _Recorder()
    run_suite(suite, [again], launcher=launcher)
    assert launcher.commands == [[sys.executable, "-m", "cnf", "fit", "--resume", m.run_dir]]
    assert RunDir(m.run_dir).checkpoint("last").exists()  # not moved aside
    assert "1 interrupted (resumed)" in capsys.readouterr().out

    # another budget: not this run any more, so it starts again (the old one kept aside)
    suite.max_steps = 300
    other = _interrupted_member(suite)
    assert classify(other, {"key": m.key})[0] == TODO
    launcher = _Recorder()
    run_suite(suite, [other], launcher=launcher)
    assert launcher.commands == [other.command] and not Path(m.run_dir).exists()
    assert list((suite.runs_dir / ".attempts").glob("m0-*-attempt"))
