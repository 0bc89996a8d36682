"""`cnf compare`: suite files, plans, resuming, failures, GPU workers (cnf/compare/)."""

import json
import os
import sys
from pathlib import Path

import pytest

from cnf.compare import Member, load_suite, main, parse_duration, plan, run_suite
from cnf.compare.cli import select as _select
from cnf.errors import ConfigError
from cnf.rundir import RunDir
from tests.conftest import REPO, tiny_suite_files


def test_parse_duration():
    assert parse_duration("10m") == "00:00:10:00"
    assert parse_duration(90) == "00:00:01:30"
    assert parse_duration("1.5h") == "00:01:30:00"
    assert parse_duration("1:2:3:4") == "01:02:03:04"
    for bad in ("soon", 0, "-3m", True):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_missing_member_names_the_config(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("members: [toy_realnvp, tabular_doesnotexist]\n")
    os.chdir(REPO)
    with pytest.raises(ConfigError, match="member 'tabular_doesnotexist' has no config file"):
        load_suite(suite)


@pytest.mark.parametrize("text, match", [
    ("members: [toy_realnvp]\nbudgte: {max_steps: 3}\n", "unknown key"),
    ("members: [toy_realnvp]\nbudget: {max_steps: -3}\n", "max_steps"),
    ("members: [toy_realnvp]\nbudget: {steps: 3}\n", "budget"),
    ("members: [toy_realnvp]\nseeds: [a]\n", "seeds"),
    ("members: []\n", "no `members`"),
    ("members: [toy_realnvp]\ndata: [no_such_data]\n", "dataset 'no_such_data'"),
])
def test_suite_errors(tmp_path, text, match):
    suite = tmp_path / "s.yaml"
    suite.write_text(text)
    os.chdir(REPO)
    with pytest.raises(ConfigError, match=match):
        load_suite(suite)


def test_shipped_toy_suite_plans_every_member_on_three_datasets():
    os.chdir(REPO)
    suite = load_suite("experiments/toy.yaml")
    assert [d.stem for d in suite.data] == ["8gaussians", "checkerboard", "2spirals"]
    members = plan(suite)
    assert len(members) == len(suite.members) * 3 * len(suite.seeds)
    m = members[0]
    cmd = " ".join(m.command)
    # a dataset named in the suite only renames the member's data (its batch size stays)
    assert "--config configs/experiment/toy_planar.yaml --data.init_args.name 8gaussians" in cmd
    assert "--trainer.max_steps 2000" in cmd and "--run.group toy" in cmd
    assert '--run.tags ["toy", "planar", "8gaussians"]' in cmd
    assert m.run_dir == str(Path("runs/toy/planar-8gaussians-s0"))
    # every toy experiment config on main is a member, except those that continue another
    # run (toy_fm_then_mle starts from the newest toy_fm run, so it cannot run on its own)
    standalone = {p.stem for p in (REPO / "configs/experiment").glob("toy_*.yaml")} - {"toy_fm_then_mle"}
    assert {p.stem for p in suite.members} == standalone
    assert m.run_name == "planar-8gaussians-s0"


@pytest.mark.parametrize("name", ["tabular", "digits", "vi", "vae"])
def test_every_shipped_suite_loads_and_plans(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CNF_DATA_DIR", str(tmp_path))  # no UCI files here
    suite = load_suite(f"experiments/{name}.yaml")
    members = plan(suite)
    assert members and all(Path(m.config).exists() for m in members)
    assert all("--data" not in m.command for m in members)  # members keep their own data
    if name == "tabular":
        assert {m.data for m in members} == {"wine", "breast_cancer"}
        # the UCI sets are not downloaded here: their members are left out, each with a note
        assert len(suite.left_out) >= 20 and all("(needs " in n for n in suite.left_out)
    if name == "vi":
        assert "planar-u1-s0" in {m.run_name for m in members}
    # every config of the suite's kind on main is a member (or left out for missing data)
    prefixes = {"tabular": ("wine_", "breast_cancer_", "power_", "gas_", "hepmass_",
                            "miniboone_", "bsds300_"),
                "digits": ("digits_",), "vi": ("vi_",), "vae": ("vae_",)}[name]
    on_main = {p.stem for p in (REPO / "configs/experiment").glob("*.yaml")
               if p.stem.startswith(prefixes)}
    listed = {p.stem for p in suite.members} | {n.split(" ")[0] for n in suite.left_out}
    assert listed == on_main


def test_member_mapping_label_data_requires(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    (tmp_path / "present").mkdir()
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(
        "name: s\nmembers:\n"
        f"  - {{config: toy_realnvp, label: rnvp, data: u9, requires: {tmp_path}/present}}\n"
        f"  - {{config: toy_maf, requires: '${{NO_SUCH_VAR:-{tmp_path}/absent}}'}}\n")
    suite = load_suite(suite_file)
    (m,) = plan(suite)
    assert (m.label, m.data, m.run_name) == ("rnvp", "u9", "rnvp-u9-s0")
    assert suite.left_out == [f"toy_maf (needs {tmp_path}/absent)"]
    suite_file.write_text("members:\n  - {config: toy_realnvp, lable: x}\n")
    with pytest.raises(ConfigError, match="member mapping"):
        load_suite(suite_file)


def test_time_budget_and_overrides(tmp_path):
    os.chdir(REPO)
    suite = load_suite("experiments/toy.yaml")
    suite.max_steps, suite.max_time = None, parse_duration("2m")
    cmd = plan(suite, wandb="disabled", extra_args=["--trainer.precision", "bf16-mixed"])[0].command
    text = " ".join(cmd)
    assert "--trainer.max_time 00:00:02:00 --trainer.max_steps -1" in text
    assert "--run.wandb disabled" in text and text.endswith("--trainer.precision bf16-mixed")
    with pytest.raises(ConfigError, match="not in this suite"):
        _select(suite.members, "toy_nothing", "only", [p.stem for p in suite.members])


def _fake_member(tmp_path: Path, i: int) -> Member:
    """A member whose 'run' records the GPU it was given and writes a finished summary."""
    run_dir = tmp_path / "runs" / "fake" / f"m{i}"
    code = (f"import json, os, pathlib, time; d = pathlib.Path({str(run_dir)!r}); d.mkdir(parents=True);"
            "time.sleep(0.3); (d / 'summary.json').write_text(json.dumps({'status': 'finished',"
            "'gpu': os.environ.get('CUDA_VISIBLE_DEVICES')})); print('[fit] done')")
    return Member(label=f"m{i}", config="x", data=None, data_config=None, seed=0,
                  run_name=f"m{i}", run_dir=str(run_dir), command=[sys.executable, "-c", code])


def test_one_member_per_gpu_runs_concurrently(tmp_path, capsys):
    from cnf.compare.suite import Suite

    suite = Suite(name="fake", path=tmp_path / "s.yaml", description="", members=[],
                  data=[None], seeds=[0], root=tmp_path / "runs")
    members = [_fake_member(tmp_path, i) for i in range(4)]
    run_suite(suite, members, gpus=["0", "1"])
    assert all(m.status == "finished" for m in members)
    gpus = [json.loads((Path(m.run_dir) / "summary.json").read_text())["gpu"] for m in members]
    assert sorted(set(gpus)) == ["0", "1"]
    assert all(m.device == g for m, g in zip(members, gpus))
    out = capsys.readouterr().out
    assert "one run per GPU on 2 GPUs" in out and "[4/4 m3]" in out and "[fit] done" in out
    state = json.loads((tmp_path / "runs" / "fake" / "suite.json").read_text())
    assert [m["status"] for m in state["members"]] == ["finished"] * 4


@pytest.mark.slow
def test_suite_runs_records_failure_and_resumes(suite_runs, capsys):
    work, status, out = suite_runs
    assert status == 1  # one member is broken on purpose
    state = json.loads((work / "runs" / "suite" / "suite.json").read_text())
    by_label = {m["label"]: m for m in state["members"]}
    assert by_label["toy_realnvp"]["status"] == "finished"
    assert by_label["small"]["status"] == "finished"
    broken = by_label["broken"]
    assert broken["status"] == "failed" and "NoSuchFlow" in broken["error"]
    assert Path(broken["log"]).exists() or (work / broken["log"]).exists()
    for label in ("toy_realnvp", "small"):
        assert RunDir(work / by_label[label]["run_dir"]).is_finished
    # progress was shown per member and for the suite
    assert "[1/3 toy_realnvp-8gaussians-s0] running toy_realnvp" in out
    assert "[fit] step 30/30 100%" in out and "suite 3/3 done, 1 failed" in out
    assert "FAILED" in out and (work / "report" / "report.html").exists()

    # resume: finished members are skipped without starting a process
    summary = work / by_label["toy_realnvp"]["run_dir"] / "summary.json"
    before = summary.stat().st_mtime_ns
    os.chdir(work)
    suite = tiny_suite_files(work)
    assert main([str(suite), "--only", "toy_realnvp,suite_small", "--no-report"]) == 0
    os.chdir(REPO)
    assert "2 already finished (skipped)" in capsys.readouterr().out
    assert summary.stat().st_mtime_ns == before
