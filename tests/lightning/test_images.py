"""ImageDensityEstimation through the CLI on digits: bits/dim, sample grids, level checks."""

import json
import math
from pathlib import Path

import pytest

from cnf.cli import run
from cnf.errors import ConfigError

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "experiment" / "digits_realnvp.yaml")
TINY = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
        "--data.init_args.batch_size", "64",
        "--model.init_args.density.init_args.flow.init_args.hidden", "8",
        "--run.wandb", "disabled"]


def test_digits_fit_logs_bits_per_dim(tmp_path):
    run(["fit", "--config", CONFIG, "--run.root", str(tmp_path), "--run.name", "t"] + TINY)
    out = tmp_path / "digits_realnvp" / "t"
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    for stage in ("val", "test"):
        assert metrics[f"{stage}/bpd"] == pytest.approx(
            metrics[f"{stage}/nll"] / (64 * math.log(2)), rel=1e-5)
    assert 0 < metrics["test/bpd"] < math.log2(17) + 1
    assert (out / "plots" / "samples_final.png").stat().st_size > 1000


def test_levels_mismatch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="levels"):
        run(["fit", "--config", CONFIG, "--run.root", str(tmp_path),
             "--model.init_args.density.init_args.levels", "256"] + TINY)
