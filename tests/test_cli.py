"""The `cnf` CLI end to end: run layout, configs, evaluation, and errors a user can cause."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from cnf.errors import ConfigError, NonFiniteError, ShapeError

from .helpers import REPO, run_cli, summary

FAST = ["--trainer.max_steps", "60", "--trainer.val_check_interval", "30",
        "--data.init_args.n_train", "4000", "--data.init_args.n_test", "2000",
        "--data.init_args.batch_size", "256"]


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_fit_writes_the_whole_run_directory(tmp_path):
    cli = run_cli(tmp_path, "fit", "toy_realnvp", *FAST)
    d = cli.run_dir
    assert d == tmp_path / "runs" / "toy_realnvp" / "t"
    for rel in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/best.ckpt",
                "checkpoints/last.ckpt", "plots/density_final.png"):
        assert (d / rel).exists(), rel
    s = summary(d)
    assert s["status"] == "finished" and s["steps"] == 60
    assert s["model"] == "RealNVP" and s["data"] == "8gaussians"
    assert s["parameters"] == sum(p.numel() for p in cli.model.parameters()) > 0
    assert s["peak_memory_mb"] > 0 and s["wall_time_s"] > 0
    for key in ("train/nll", "val/nll", "test/nll", "time/train_step_s"):
        assert key in s["metrics"], key
    rows = read_metrics(d)
    assert any(r["train/nll"] for r in rows) and any(r["val/nll"] for r in rows)
    # the resolved config reproduces the model
    assert "cnf.flows.coupling.RealNVP" in (d / "config.yaml").read_text()
    ckpt = torch.load(d / "checkpoints" / "best.ckpt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_stacked_configs_and_dotted_overrides(tmp_path):
    override = tmp_path / "short.yaml"
    override.write_text("trainer:\n  max_steps: 12\nrun:\n  test_after_fit: false\n")
    cli = run_cli(tmp_path, "fit", "toy_realnvp", "--config", str(override),
                  "--data.init_args.n_train", "2000", "--trainer.val_check_interval", "6",
                  "--model.init_args.density.init_args.flow.init_args.num_layers", "2")
    assert cli.trainer.global_step == 12
    assert len(cli.model.density.flow) == 2
    assert "test/nll" not in summary(cli.run_dir)["metrics"]


def test_validate_and_test_from_a_checkpoint_write_evaluations_of_that_run(tmp_path):
    fit = run_cli(tmp_path, "fit", "toy_realnvp", *FAST, "--run.test_after_fit", "false")
    ckpt = fit.run_dir / "checkpoints" / "best.ckpt"
    record = (fit.run_dir / "summary.json").read_bytes()
    test = run_cli(tmp_path, "test", "toy_realnvp", "--ckpt_path", str(ckpt),
                   "--data.init_args.n_test", "2000", name="")
    assert test.run_dir == fit.run_dir
    assert test.eval_dir.path == fit.run_dir / "evals" / "test-8gaussians-best"
    assert (fit.run_dir / "summary.json").read_bytes() == record  # the training record stays
    s = summary(test.eval_dir.path)
    assert s["status"] == "finished" and s["kind"] == "evaluation" and "test/nll" in s["metrics"]
    assert s["metrics"]["test/nll"] < 4.5  # better than an untrained model (~5+ nats)
    assert (test.eval_dir.path / "metrics.csv").exists()
    val = run_cli(tmp_path, "validate", "toy_realnvp", "--ckpt_path", str(ckpt), name="")
    assert abs(summary(val.eval_dir.path)["metrics"]["val/nll"]
               - summary(fit.run_dir)["best_score"]) < 1e-4


def test_print_config_shows_the_resolved_config(capsys):
    from cnf.cli import main  # in-process: the console entry itself is run by the test below

    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(REPO / "configs/experiment/toy_realnvp.yaml"),
              "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    assert "cnf.flows.coupling.RealNVP" in out and "inference_mode: false" in out


def test_unknown_key_and_wrong_class_path_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="(?s)max_stepz.*--print_config"):
        run_cli(tmp_path, "fit", "toy_realnvp", "--trainer.max_stepz", "3")
    with pytest.raises(ConfigError, match="RealNVq"):
        run_cli(tmp_path, "fit", "toy_realnvp",
                "--model.init_args.density.init_args.flow.class_path", "cnf.flows.coupling.RealNVq")
    with pytest.raises(ConfigError, match="unknown toy dataset '9gaussians'"):
        run_cli(tmp_path, "fit", "toy_realnvp", "--data.init_args.name", "9gaussians")


def test_cli_prints_a_clean_error_and_exits_2():
    out = subprocess.run([sys.executable, "-m", "cnf", "fit", "--config",
                          "configs/experiment/toy_realnvp.yaml", "--data.init_args.name", "nope"],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 2
    assert "cnf: error: unknown toy dataset 'nope'" in out.stderr
    assert "Traceback" not in out.stderr


def test_data_dimension_mismatch_is_a_shape_error(tmp_path):
    with pytest.raises(ShapeError, match=r"expects data of shape \[batch, 3\]"):
        run_cli(tmp_path, "fit", "toy_realnvp", *FAST,
                "--model.init_args.density.init_args.flow.init_args.dim", "3",
                "--model.init_args.density.init_args.base.init_args.shape", "3")


def test_nan_batch_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError, match=r"(?s)NaN or inf.*The last checkpoint \(step \d+\)"):
        run_cli(tmp_path, "fit", "toy_realnvp", *FAST,
                "--data.class_path", "tests.lightning.nan_data.NaNAfterFirstEpoch",
                "--data.init_args.n_train", "1024", "--trainer.val_check_interval", "2",
                "--data.init_args.resample_every_epoch", "true",
                "--trainer.max_steps", "50")
    d = tmp_path / "runs" / "toy_realnvp" / "t"
    s = summary(d)
    assert s["status"] == "failed" and "NonFiniteError" in s["error"]
    assert (d / "metrics.csv").exists() and read_metrics(d)
    ckpt = torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] >= 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_wandb_offline_run_lands_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cli = run_cli(tmp_path, "fit", "toy_realnvp", "--run.wandb", "offline",
                  "--trainer.max_steps", "10", "--trainer.val_check_interval", "5",
                  "--data.init_args.n_train", "2000", "--run.test_after_fit", "false")
    import wandb

    wandb.finish()
    runs = list((cli.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert runs, list(cli.run_dir.rglob("*"))
    assert runs[0].stat().st_size > 0


@pytest.mark.slow
def test_realnvp_reaches_target_nll_on_8gaussians(tmp_path):
    """Issue 2's bar: val/nll <= 3.1 nats after 1000 steps (a fitted Gaussian: 4.26; data
    entropy: 2.84). Measured: 3.01 in ~9 s of training."""
    cli = run_cli(tmp_path, "fit", "toy_realnvp", "--trainer.max_steps", "1000",
                  "--run.test_after_fit", "false")
    assert summary(cli.run_dir)["metrics"]["val/nll"] <= 3.1


def test_lr_scheduler_from_config_steps_every_step(tmp_path):
    sched = tmp_path / "sched.yaml"
    sched.write_text("model:\n  init_args:\n    lr_scheduler:\n"
                     "      class_path: torch.optim.lr_scheduler.CosineAnnealingLR\n"
                     "      init_args:\n        T_max: 20\n        eta_min: 0.0\n")
    cli = run_cli(tmp_path, "fit", "toy_realnvp", "--config", str(sched),
                  "--trainer.max_steps", "10", "--trainer.val_check_interval", "5",
                  "--data.init_args.n_train", "2000", "--run.test_after_fit", "false")
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert abs(lr - 0.5e-3) < 1e-6  # cosine half way: (1 + cos(pi/2)) / 2 * 1e-3


def test_periodic_density_plots(tmp_path):
    cli = run_cli(tmp_path, "fit", "toy_realnvp", "--trainer.max_steps", "20",
                  "--trainer.val_check_interval", "10", "--data.init_args.n_train", "2000",
                  "--run.plot_every_n_val", "1", "--run.test_after_fit", "false")
    plots = sorted(p.name for p in (cli.run_dir / "plots").glob("*.png"))
    assert plots == ["density_final.png", "density_step10.png", "density_step20.png"]
