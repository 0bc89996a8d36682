"""The run lifecycle (issue 12): one test per reproduced problem, numbered as in the issue.

A run directory is written once, by one process; resume appends; evaluations and
predictions live beside the training record and never rewrite it; interrupts keep work;
argument errors leave nothing behind; checkpoints load weights-only.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnf.cli import main, run
from cnf.errors import ConfigError, NonFiniteError, UntrustedCheckpointError
from cnf.rundir import RunDir

from .helpers import EXPERIMENTS, REPO, run_cli

FAST = ["--trainer.max_steps", "40", "--trainer.val_check_interval", "20",
        "--data.init_args.n_train", "2000", "--data.init_args.n_test", "1000",
        "--data.init_args.batch_size", "256"]
TOY = str(EXPERIMENTS / "toy_realnvp.yaml")


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(RunDir(run_dir).metrics, newline="") as f:
        return list(csv.DictReader(f))


def kind(row: dict[str, str]) -> str:
    for prefix in ("test/", "val/", "train/"):
        if any(v for k, v in row.items() if k.startswith(prefix)):
            return prefix
    return "other"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 40-step toy run ``runs/toy_realnvp/a`` (tested after fit)."""
    root = tmp_path_factory.mktemp("trained")
    cli = run_cli(root, "fit", "toy_realnvp", *FAST, name="a")
    return root, cli.run_dir


# 1 ------------------------------------------------------------------------------------------
def test_1_rerunning_a_saved_config_makes_a_new_run(trained, tmp_path):
    root, a = trained
    before = {p.name: p.read_bytes() for p in (RunDir(a).summary_path, RunDir(a).metrics)}
    cli = run(["fit", "--config", str(RunDir(a).config), "--run.test_after_fit", "false",
               "--trainer.max_steps", "5", "--trainer.enable_progress_bar", "false"])
    assert cli.run_dir != a and cli.run_dir.parent == a.parent
    assert {p.name: p.read_bytes() for p in (RunDir(a).summary_path, RunDir(a).metrics)} == before
    assert RunDir(cli.run_dir).read_summary()["config_from"] == str(a)
    assert sorted(p.name for p in RunDir(a).checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    # naming the old run explicitly is refused, with the resume command
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume"):
        run_cli(root, "fit", "toy_realnvp", *FAST, name="a")


# 2 (a second fit while one runs: tests/test_runs_signals.py) --------------------------------
def test_2_a_stale_lock_is_detected_and_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_ = RunDir(tmp_path / "r")
    run_.path.mkdir()
    run_.lock_path.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename,
                                          "since": 0}))
    assert run_.lock_info().alive is False
    note = run_.lock()
    assert note and f"stale lock of process {dead.pid}" in note
    assert run_.lock_info().pid == os.getpid()
    run_.unlock()
    assert run_.lock_info() is None


# 3 (resume after an interrupt: tests/test_runs_signals.py) -------------------------------
def test_3_resume_without_a_checkpoint_says_so(tmp_path):
    run_ = RunDir(tmp_path / "toy_realnvp" / "x")
    run_.path.mkdir(parents=True)
    run_.config.write_text(Path(TOY).read_text())
    with pytest.raises(ConfigError, match="No checkpoint was written yet"):
        run(["fit", "--resume", str(run_.path)])


# 4 ------------------------------------------------------------------------------------------
def test_4_test_without_a_checkpoint_is_refused_unless_untrained(tmp_path):
    with pytest.raises(ConfigError, match="--untrained"):
        run_cli(tmp_path, "test", "toy_realnvp", name="")
    assert not (tmp_path / "runs").exists()
    cli = run_cli(tmp_path, "test", "toy_realnvp", "--untrained",
                  "--data.init_args.n_test", "500", name="")
    ev = cli.eval_dir
    assert ev.path.parent == tmp_path / "runs" / "toy_realnvp" / "evals"
    s = ev.read_summary()
    assert s["untrained"] is True and s["kind"] == "evaluation" and "test/nll" in s["metrics"]
    from cnf.errors import DataError
    from cnf.report.runs import load_evaluations, load_runs

    with pytest.raises(DataError, match="no runs under"):
        load_runs(tmp_path / "runs")  # an untrained evaluation is not a run
    assert [e.label for e in load_evaluations(tmp_path / "runs")] == ["untrained"]


# 5 ------------------------------------------------------------------------------------------
def test_5_test_on_other_data_goes_to_evals_and_leaves_the_run_alone(trained, tmp_path):
    from cnf.report import write_report

    root, a = trained
    record = RunDir(a)
    before = record.summary_path.read_bytes()
    ckpt = record.checkpoint("best")
    clis = [run_cli(root, "test", "toy_realnvp", "--ckpt_path", str(ckpt), "--data",
                    str(REPO / "configs" / "data" / "moons.yaml"),
                    "--data.init_args.n_test", "500", name="") for _ in range(2)]
    assert record.summary_path.read_bytes() == before
    names = [c.eval_dir.path.name for c in clis]
    assert names == ["test-moons-best", "test-moons-best-2"]  # never overwritten
    s = clis[0].eval_dir.read_summary()
    assert s["data"] == "moons" and s["checkpoint"] == str(ckpt) and s["of_run"] == str(a)
    assert clis[0].eval_dir.config.exists() and clis[0].eval_dir.metrics.exists()
    out = write_report(root / "runs", tmp_path / "rep")
    md = out["markdown"].read_text()
    assert "## Evaluations" in md and "test-moons-best" in md
    results = md.split("## Results")[1].split("##")[1]
    assert "moons" not in results.splitlines()[0]  # the run is still listed under 8gaussians


# 6 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_6_predict_writes_per_example_log_likelihoods(trained, fmt):
    root, a = trained
    ckpt = RunDir(a).checkpoint("best")
    paths = []
    for _ in range(2):
        cli = run_cli(root, "predict", "toy_realnvp", "--ckpt_path", str(ckpt),
                      "--data.init_args.n_test", "700", "--run.predictions_format", fmt,
                      name="")
        paths.append(cli.predictions_path)
    assert paths[0] != paths[1] and all(p.exists() for p in paths)  # never overwritten
    assert paths[0].parent == RunDir(a).predictions
    if fmt == "csv":
        with open(paths[0], newline="") as f:
            table = list(csv.DictReader(f))
        col = {k: torch.tensor([float(r[k]) for r in table]) for k in table[0]}
    else:
        pd = pytest.importorskip("pandas")
        col = {k: torch.tensor(v.to_numpy()) for k, v in pd.read_parquet(paths[0]).items()}
    x = cli.datamodule.test_set
    assert len(col["row"]) == len(x) == 700
    assert col["row"].tolist() == list(range(700))
    cli.model.eval()
    with torch.no_grad():
        expected = cli.model.density.log_prob(x).double()
    torch.testing.assert_close(col["log_likelihood"].double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(col["nll_per_dim"].double(), -expected / 2, rtol=1e-5, atol=1e-5)
    p = col["p_value"]
    assert ((p > 0) & (p <= 1)).all()
    # lower likelihood, smaller p-value
    order = expected.argsort()
    assert (p[order].diff() >= 0).all()
    meta = json.loads(paths[0].with_suffix(".json").read_text())
    assert meta["rows"] == 700 and meta["checkpoint"] == str(ckpt)


def test_6_p_values_against_the_validation_set():
    import numpy as np

    from cnf.lightning.predictions import p_values

    ref = np.random.default_rng(0).normal(size=999)
    p = p_values(np.array([-10.0, 0.0, 10.0]), ref)
    assert p[0] == pytest.approx(1 / 1000) and p[2] == 1.0 and 0.4 < p[1] < 0.6


# 8 ------------------------------------------------------------------------------------------
def test_8_a_failure_before_any_checkpoint_says_none_was_written(tmp_path):
    with pytest.raises(NonFiniteError) as err:
        run_cli(tmp_path, "fit", "toy_realnvp", *FAST,
                "--data.class_path", "tests.lightning.nan_data.NaNFromStart")
    msg = str(err.value)
    assert "No checkpoint was written yet" in msg and "checkpoints/ folder" not in msg
    run_ = RunDir(tmp_path / "runs" / "toy_realnvp" / "t")
    assert not run_.checkpoints.exists() or not any(run_.checkpoints.iterdir())
    assert run_.read_summary()["status"] == "failed"


# 10 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [["--trainer.max_steps", "-5"], ["--trainer.devices", "0"],
                                 ["--trainer.accelerator", "tpu"]])
def test_10_argument_errors_exit_2_and_leave_no_run_directory(tmp_path, capsys, bad):
    root = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", TOY, "--run.root", str(root), "--run.wandb", "disabled", *bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnf: error:") or "\ncnf: error:" in err, err
    assert "Traceback" not in err
    assert not root.exists() or not any(root.rglob("*")), list(root.rglob("*"))


# checkpoints cannot run code -------------------------------------------------------------------
class _WritesAFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_needs_unpickling_is_refused(trained, tmp_path):
    root, a = trained
    marker = tmp_path / "pwned"
    ckpt = torch.load(RunDir(a).checkpoint("best"), map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["payload"] = _WritesAFile(marker)
    evil = tmp_path / "shared.ckpt"
    torch.save(ckpt, evil)
    for sub in ("test", "predict"):
        with pytest.raises(UntrustedCheckpointError, match="--weights_only false"):
            run_cli(tmp_path, sub, "toy_realnvp", "--ckpt_path", str(evil), name="")
        assert not marker.exists(), "loading the checkpoint ran its pickled code"
    with pytest.raises(UntrustedCheckpointError, match="--weights_only false"):
        run_cli(tmp_path, "fit", "toy_realnvp", *FAST, "--ckpt_path", str(evil), name="f")
    assert not marker.exists()


# issue 16 --------------------------------------------------------------------------------------
def test_a_yaml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("trainer:\n  max_steps: [1, 2\n")
    with pytest.raises(ConfigError, match=str(bad)) as err:
        run_cli(tmp_path, "fit", "toy_realnvp", "--config", str(bad))
    assert "<unicode string>" not in str(err.value)


def test_a_new_run_warns_about_no_existing_logs(tmp_path, recwarn):
    run_cli(tmp_path, "fit", "toy_realnvp", "--trainer.max_steps", "3",
            "--trainer.val_check_interval", "3", "--data.init_args.n_train", "500",
            "--run.test_after_fit", "false")
    texts = [str(w.message) for w in recwarn]
    assert not [t for t in texts if "will be deleted" in t or "exists and is not empty" in t], texts


# W&B (issue 16): the offline run holds the summary fields and the plots; resume continues it
def test_wandb_run_has_the_summary_fields_and_plots_and_resume_keeps_its_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = ["--run.wandb", "offline", "--trainer.val_check_interval", "5",
            "--data.init_args.n_train", "1000", "--run.test_after_fit", "false"]
    cli = run_cli(tmp_path, "fit", "toy_realnvp", "--trainer.max_steps", "5", *args)
    import wandb

    wandb.finish()
    run(["fit", "--resume", str(cli.run_dir), "--trainer.max_steps", "10",
         "--trainer.enable_progress_bar", "false", *args])
    wandb.finish()
    runs = sorted((cli.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    ids = {p.stem for p in runs}
    assert len(runs) == 2 and ids == {f"run-{RunDir(cli.run_dir).read_summary()['wandb_id']}"}
    exe = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(exe), "leet", "inspect", "--json", str(runs[-1])],
                         capture_output=True, text=True, timeout=120)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summary: dict = {}
    for r in records:
        if r.get("type") == "summary":
            summary.update(r["summary"].get("update", {}))
    s = RunDir(cli.run_dir).read_summary()
    assert summary["status"] == "finished" and summary["parameters"] == s["parameters"]
    assert summary["s_per_step"] == s["s_per_step"] and summary["peak_memory_mb"] > 0
    assert summary["steps"] == 10
    assert summary["plots/density_final._type"] == "images/separated"
