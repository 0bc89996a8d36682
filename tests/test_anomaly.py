"""cnf.anomaly: scores of vector runs, AUROC against shifted copies and labelled files."""

from __future__ import annotations

import argparse
import types

import numpy as np
import pytest
import torch

from cnf import anomaly
from cnf.data.files import FileDataModule
from cnf.distributions import Density, StandardNormal
from cnf.errors import ConfigError, DataError
from cnf.flows.coupling import RealNVP


def _gaussian_density(dim: int) -> Density:
    flow = RealNVP(dim, num_layers=2, hidden=8)
    for p in flow.parameters():  # the identity: the density is exactly N(0, I)
        torch.nn.init.zeros_(p)
    return Density(flow, StandardNormal(dim))


def test_shifted_copies_of_a_tabular_test_set_score_low():
    torch.manual_seed(0)
    dm = types.SimpleNamespace(val_set=torch.randn(2000, 4), test_set=torch.randn(500, 4),
                               setup=lambda stage: None)
    out = anomaly.evaluate(_gaussian_density(4), dm, shift=4.0)
    assert out["units"] == "model" and (out["n_normal"], out["n_anomalous"]) == (500, 500)
    assert out["auroc"] > 0.97
    # normal rows are flagged at about the nominal rate, shifted rows far more often
    assert 0.02 < out["flagged_p<0.05_normal"] < 0.09
    assert out["flagged_p<0.05_anomalous"] > 0.6
    copies = anomaly.shifted_copies(dm.test_set, 4.0)
    torch.testing.assert_close((copies - dm.test_set).norm(dim=1), torch.full((500,), 4.0))


def test_labelled_file_scores_in_original_units(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3000, 2)) * [10.0, 0.1]
    np.savetxt(tmp_path / "bg.csv", data, delimiter=",", header="a,b", comments="")
    new = np.c_[data[:100], np.zeros(100)]
    new[:10, 0] += 80.0
    new[:10, 2] = 1
    np.savetxt(tmp_path / "new.csv", new, delimiter=",", header="a,b,label", comments="")
    dm = FileDataModule(str(tmp_path / "bg.csv"))
    out = anomaly.evaluate(_gaussian_density(2), dm, str(tmp_path / "new.csv"), "label",
                           out_csv=tmp_path / "scores.csv")
    assert out["units"] == "original" and out["auroc"] == pytest.approx(1.0)
    rows = np.genfromtxt(tmp_path / "scores.csv", delimiter=",", names=True)
    true = (-0.5 * (new[:, :2] / [10.0, 0.1]) ** 2 - np.log([10.0, 0.1])
            - 0.5 * np.log(2 * np.pi)).sum(1)
    # equal up to the training split's estimated mean / std (2,400 rows)
    np.testing.assert_allclose(rows["log_prob"][10:], true[10:], atol=0.15)
    assert abs(rows["log_prob"][10:].mean() - true[10:].mean()) < 0.05
    np.testing.assert_array_equal(rows["label"], new[:, 2])
    with pytest.raises(ConfigError, match="--label-column"):
        anomaly.evaluate(_gaussian_density(2), dm, str(tmp_path / "new.csv"))
    with pytest.raises(DataError, match="must hold 0"):
        anomaly.evaluate(_gaussian_density(2), dm, str(tmp_path / "new.csv"), "a")


def test_arguments_register_on_a_parser():
    p = argparse.ArgumentParser()
    anomaly.add_arguments(p)
    args = p.parse_args(["--score-file", "f.csv", "--label-column", "y"])
    assert (args.score_file, args.label_column, args.shift) == ("f.csv", "y", 4.0)
