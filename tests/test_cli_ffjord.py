"""FFJORD through the `cnf` CLI: the three toy experiments fit, validate and test, and log
NFE (train/nfe_forward, train/nfe_backward, val/nfe) and the RNODE terms."""

from __future__ import annotations

import csv

import pytest

from .helpers import run_cli, summary

SMALL = ["--model.init_args.density.init_args.flow.init_args.hidden", "[16, 16]"]
FAST = ["--trainer.max_steps", "20", "--trainer.val_check_interval", "10",
        "--trainer.log_every_n_steps", "5",
        "--data.init_args.n_train", "2000", "--data.init_args.n_val", "500",
        "--data.init_args.n_test", "500", *SMALL]


def _columns(run_dir):
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k for r in rows for k, v in r.items() if v not in ("", None)}


@pytest.mark.slow
@pytest.mark.parametrize("experiment,extra", [
    ("toy_ffjord", set()),
    ("toy_ffjord_hutch", set()),
    ("toy_ffjord_rnode", {"train/kinetic_energy", "train/jacobian_frobenius"}),
])
def test_ffjord_experiments_fit_validate_test(tmp_path, experiment, extra):
    fit = run_cli(tmp_path, "fit", experiment, *FAST, "--run.test_after_fit", "false")
    cols = _columns(fit.run_dir)
    for key in {"train/nll", "val/nll", "train/nfe_forward", "train/nfe_backward", "val/nfe"} | extra:
        assert key in cols, (key, sorted(cols))
    flow = fit.model.density.flow
    assert type(flow).__name__ == "FFJORD"
    ckpt = fit.run_dir / "checkpoints" / "best.ckpt"
    val = run_cli(tmp_path, "validate", experiment, "--ckpt_path", str(ckpt),
                  "--data.init_args.n_val", "500", *SMALL, name="")
    test = run_cli(tmp_path, "test", experiment, "--ckpt_path", str(ckpt),
                   "--data.init_args.n_test", "500", *SMALL, name="")
    assert val.run_dir == test.run_dir == fit.run_dir
    # evaluations live in <run>/evals/, apart from the training record
    metrics = {**summary(val.eval_dir.path)["metrics"], **summary(test.eval_dir.path)["metrics"]}
    # validate re-scores the best checkpoint on the same validation set with the exact trace
    assert abs(metrics["val/nll"] - summary(fit.run_dir)["best_score"]) < 1e-3
    assert 2.5 < metrics["test/nll"] < 8.0
    assert metrics["test/nfe"] > 0
