"""cnf fit on a user file: the file_* configs, dimensions taken from the data, and the
standardization carried in the checkpoint."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from cnf.errors import DataError
from cnf.flows.continuous import FFJORD
from cnf.rundir import RunDir
from tests.helpers import run_cli, summary


def five_column_csv(path, n=1000):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(n, 5)) * [1, 2, 3, 4, 5] + 10
    np.savetxt(path, data, delimiter=",", header="a,b,c,d,e", comments="")
    return path


def test_file_config_without_a_path_says_how_to_give_one(tmp_path):
    with pytest.raises(DataError, match=r"--data.init_args.path my.csv"):
        run_cli(tmp_path, "fit", "file_nsf")


@pytest.mark.parametrize("config, dims", [("file_maf", (5, None)), ("file_nsf", (5, None)),
                                          ("file_cond_nsf", (4, 1)), ("file_ffjord", (5, None)),
                                          ("file_cond_ffjord", (4, 1))])
def test_file_configs_take_dim_and_context_dim_from_the_file(tmp_path, config, dims):
    if config == "file_cond_ffjord" and "context_dim" not in inspect.signature(FFJORD).parameters:
        pytest.skip("FFJORD has no context_dim yet (the flow-matching issue adds it)")
    csv = five_column_csv(tmp_path / "my.csv")
    cli = run_cli(tmp_path, "fit", config, "--data.init_args.path", str(csv),
                  "--trainer.max_steps", "1", "--run.test_after_fit", "false",
                  "--run.progress", "none")
    density = cli.model.density
    assert density.flow.dim == dims[0] and density.event_shape == (dims[0],)
    assert density.context_dim in ((0, None) if dims[1] is None else (dims[1],))
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch[0].shape[1] == dims[0] and len(batch) == (2 if dims[1] else 1)


@pytest.mark.slow
def test_fit_on_a_five_column_csv_with_no_dim_in_the_config(tmp_path):
    csv = five_column_csv(tmp_path / "my.csv", n=2000)
    cli = run_cli(tmp_path, "fit", "file_nsf", "--data.init_args.path", str(csv),
                  "--trainer.max_steps", "150", "--trainer.val_check_interval", "50")
    assert cli.model.density.flow.dim == 5
    metrics = summary(cli.run_dir)["metrics"]
    # the data are N(10, diag(1, 4, 9, 16, 25)): entropy 5/2 log(2 pi e) + log 120 = 11.88 nats;
    # the original-units NLL adds sum(log std) = log 120 to the standardized one
    assert metrics["test/nll_original_units"] - metrics["test/nll"] == pytest.approx(
        np.log(120), abs=0.05)
    assert metrics["test/nll_original_units"] < 11.88 + 0.5
    recorded = summary(cli.run_dir)["data_file"]
    assert recorded["sizes"] == {"train": 1600, "val": 200, "test": 200}
    assert recorded["seed"] == 0 and recorded["method"] == "fraction"
    ckpt = torch.load(RunDir(cli.run_dir).checkpoint("best"), weights_only=True)
    state = ckpt["FileDataModule"]
    assert state["columns"] == ["a", "b", "c", "d", "e"]
    np.testing.assert_allclose(state["x_scale"], [1, 2, 3, 4, 5], rtol=0.06)
