"""cnf.data.files: formats, columns, splits, standardization and the errors users meet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnf.data.files import FileDataModule, read_table
from cnf.errors import DataError

RNG = np.random.default_rng(0)
DATA = RNG.normal(size=(200, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.5]
NAMES = ["a", "b", "c"]


def write_csv(path, data, names=NAMES, delimiter=","):
    with open(path, "w") as f:
        if names is not None:
            f.write(delimiter.join(names) + "\n")
        for row in data:
            f.write(delimiter.join("nan" if np.isnan(v) else repr(float(v)) for v in row) + "\n")
    return path


def all_rows(dm: FileDataModule) -> np.ndarray:
    """The raw rows of every split, in file order (standardize must be 'none')."""
    dm.setup("fit")
    parts = [dm.split_arrays(s)[0].double().numpy() for s in ("train", "val", "test")]
    idx = np.concatenate([dm._splits[s][2] for s in ("train", "val", "test")])  # noqa: SLF001
    return np.concatenate(parts)[np.argsort(idx)]


def _writers(tmp_path):
    def npz_columns(p):
        np.savez(p, **{n: DATA[:, j] for j, n in enumerate(NAMES)})

    def hdf5(p):
        h5py = pytest.importorskip("h5py")
        with h5py.File(p, "w") as f:
            f["table"] = DATA

    def parquet(p):
        pd = pytest.importorskip("pandas")
        pytest.importorskip("pyarrow")
        pd.DataFrame(DATA, columns=NAMES).to_parquet(p)

    return {
        "csv": ("d.csv", lambda p: write_csv(p, DATA), {}),
        "csv-no-header": ("d.csv", lambda p: write_csv(p, DATA, names=None), {}),
        "tsv": ("d.tsv", lambda p: write_csv(p, DATA, delimiter="\t"), {}),
        "npy": ("d.npy", lambda p: np.save(p, DATA), {}),
        "npz-key": ("d.npz", lambda p: np.savez(p, table=DATA, other=np.zeros(3)), {"key": "table"}),
        "npz-columns": ("d.npz", npz_columns, {}),
        "hdf5": ("d.h5", hdf5, {"key": "table"}),
        "parquet": ("d.parquet", parquet, {}),
    }


@pytest.mark.parametrize("fmt", ["csv", "csv-no-header", "tsv", "npy", "npz-key", "npz-columns",
                                 "hdf5", "parquet"])
def test_round_trip_every_format(tmp_path, fmt):
    name, write, kw = _writers(tmp_path)[fmt]
    path = tmp_path / name
    write(path)
    dm = FileDataModule(str(path), standardize="none", batch_size=32, dtype="float64", **kw)
    assert dm.dim == 3 and dm.context_dim == 0
    np.testing.assert_allclose(all_rows(dm), DATA, rtol=1e-12)
    if fmt in ("csv", "tsv", "npz-columns", "parquet"):
        assert dm.x_names == NAMES


def test_columns_and_context_by_name_and_index(tmp_path):
    write_csv(tmp_path / "d.csv", DATA)
    dm = FileDataModule(str(tmp_path / "d.csv"), columns=["c", 0], context_columns=[1],
                        batch_size=32, standardize="none", dtype="float64")
    assert (dm.dim, dm.context_dim, dm.x_names, dm.context_names) == (2, 1, ["c", "a"], ["b"])
    dm.setup("fit")
    x, c = next(iter(dm.val_dataloader()))
    rows = dm._splits["val"][2]  # noqa: SLF001
    np.testing.assert_allclose(x.numpy(), DATA[rows][:, [2, 0]])
    np.testing.assert_allclose(c.numpy(), DATA[rows][:, [1]])
    assert dm.val_set is None  # conditional: no x-only tensors for x-only tools


def test_non_numeric_columns_are_ignored_unless_asked(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w") as f:
        f.write("a,label,b\n")
        for i, r in enumerate(DATA):
            f.write(f"{r[0]},{'xy'[i % 2]},{r[1]}\n")
    assert FileDataModule(str(path)).x_names == ["a", "b"]
    with pytest.raises(DataError, match=r"column 'label' is not numeric: 'x' at row 0 \(line 2\)"):
        _ = FileDataModule(str(path), columns=["a", "label"]).dim


def test_nan_names_file_row_and_column(tmp_path):
    data = DATA.copy()
    data[37, 1] = np.nan
    path = write_csv(tmp_path / "d.csv", data)
    with pytest.raises(DataError) as err:
        FileDataModule(str(path), batch_size=32).setup("fit")
    msg = str(err.value)
    assert "d.csv" in msg and "column 'b'" in msg and "row 37 (line 39)" in msg
    assert "nan_policy" in msg
    # the same row in a .npy (no lines: the 0-based row)
    np.save(tmp_path / "d.npy", data)
    with pytest.raises(DataError, match=r"d.npy: NaN in column '1' at row 37"):
        FileDataModule(str(tmp_path / "d.npy"), batch_size=32).setup("fit")


def test_nan_policy_drop_counts_rows(tmp_path):
    data = DATA.copy()
    data[[3, 50, 51], 2] = [np.nan, np.inf, -np.inf]
    dm = FileDataModule(str(write_csv(tmp_path / "d.csv", data)), nan_policy="drop", batch_size=32)
    dm.setup("fit")
    s = dm.summary()
    assert sum(s["dropped_rows"].values()) == 3
    assert sum(s["sizes"].values()) == 197
    kept = np.concatenate([dm._splits[k][2] for k in ("train", "val", "test")])  # noqa: SLF001
    assert not set(kept.tolist()) & {3, 50, 51}


def test_constant_column_missing_file_and_too_few_rows(tmp_path):
    data = DATA.copy()
    data[:, 2] = 4.0
    with pytest.raises(DataError, match=r"column 'c' is constant"):
        FileDataModule(str(write_csv(tmp_path / "c.csv", data)), batch_size=32).setup("fit")
    with pytest.raises(DataError, match=r"not found: .*nope\.csv.*--data.init_args.path"):
        FileDataModule(str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"not found: .*nope\.csv.*--data.init_args.predict_path"):
        FileDataModule(str(tmp_path / "c.csv"), predict_path=str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"--data.init_args.path"):
        FileDataModule()
    with pytest.raises(DataError, match=r"160 rows, fewer than one batch \(batch_size=256\)"):
        FileDataModule(str(write_csv(tmp_path / "d.csv", DATA)), batch_size=256).setup("fit")


def test_splits_fraction_column_and_files(tmp_path):
    path = write_csv(tmp_path / "d.csv", DATA)
    a = FileDataModule(str(path), seed=3, batch_size=16)
    a.setup("fit")
    b = FileDataModule(str(path), seed=3, batch_size=16)
    b.setup("fit")
    rows = {s: a._splits[s][2] for s in ("train", "val", "test")}  # noqa: SLF001
    assert all(np.array_equal(rows[s], b._splits[s][2]) for s in rows)  # noqa: SLF001
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(200))
    assert a.summary()["sizes"] == {"train": 160, "val": 20, "test": 20}
    assert a.summary()["seed"] == 3 and a.summary()["method"] == "fraction"
    # a split column
    split = np.array(["train"] * 150 + ["val"] * 30 + ["test"] * 20)
    with open(tmp_path / "s.csv", "w") as f:
        f.write("a,b,c,split\n")
        for r, s in zip(DATA, split):
            f.write(",".join(map(str, r)) + f",{s}\n")
    dm = FileDataModule(str(tmp_path / "s.csv"), split_column="split", batch_size=16)
    dm.setup("fit")
    assert dm.dim == 3 and dm.summary()["sizes"] == {"train": 150, "val": 30, "test": 20}
    assert dm.summary()["method"] == "column"
    # explicit files
    write_csv(tmp_path / "v.csv", DATA[:10])
    write_csv(tmp_path / "t.csv", DATA[:7])
    dm = FileDataModule(str(path), val_path=str(tmp_path / "v.csv"),
                        test_path=str(tmp_path / "t.csv"), batch_size=16)
    dm.setup("fit")
    assert dm.summary()["sizes"] == {"train": 200, "val": 10, "test": 7}
    assert dm.summary()["method"] == "files"


def test_standardization_state_round_trip(tmp_path):
    path = write_csv(tmp_path / "d.csv", DATA)
    for mode in ("meanstd", "minmax"):
        dm = FileDataModule(str(path), standardize=mode, batch_size=16)
        dm.setup("fit")
        x = dm.split_arrays("train")[0].double()
        if mode == "meanstd":
            torch.testing.assert_close(x.mean(0), torch.zeros(3, dtype=x.dtype), atol=1e-6, rtol=0)
            torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(3, dtype=x.dtype))
        else:
            assert float(x.min()) == pytest.approx(0.0, abs=1e-6)
            assert float(x.max()) == pytest.approx(1.0, abs=1e-6)
        state = dm.state_dict()
        # a predict-time module on another file: the checkpoint's statistics, not its own
        other = write_csv(tmp_path / "new.csv", DATA[:5] * 10)
        dm2 = FileDataModule(str(other), predict_path=str(other), standardize=mode)
        dm2.load_state_dict(state)
        xp = next(iter(dm2.predict_dataloader()))[0]
        torch.testing.assert_close(xp, dm.transform(DATA[:5] * 10)[0])
        np.testing.assert_array_equal(dm2.predict_index, np.arange(5))
        assert dm2.log_prob_offset == pytest.approx(-np.log(state["x_scale"]).sum())
    with pytest.raises(DataError, match="trained on columns"):
        FileDataModule(str(path), columns=["a", "b"]).load_state_dict(state)


def test_log_prob_in_original_units_is_the_gaussian_log_density(tmp_path):
    """With data ~ N(mu, diag(sigma^2)) and the model N(0, I) on standardized x, log p + the
    data module's offset is the log-density of the file's Gaussian (up to the estimated
    mean/std: a few 1e-3 nats at 20k rows)."""
    from cnf.distributions import Density, StandardNormal
    from cnf.flows.coupling import RealNVP

    rng = np.random.default_rng(1)
    mu, sigma = np.array([100.0, -3.0, 0.01]), np.array([50.0, 0.2, 0.001])
    data = rng.normal(size=(20_000, 3)) * sigma + mu
    np.save(tmp_path / "g.npy", data)
    dm = FileDataModule(str(tmp_path / "g.npy"), dtype="float64")
    dm.setup("fit")
    flow = RealNVP(3, num_layers=2)
    for p in flow.parameters():  # zero weights: the couplings are the identity
        torch.nn.init.zeros_(p)
    density = Density(flow, StandardNormal(3)).double()
    x, _ = dm.split_arrays("test")
    lp = density.log_prob(x).detach().numpy() + dm.log_prob_offset
    rows = dm._splits["test"][2]  # noqa: SLF001
    true = (-0.5 * ((data[rows] - mu) / sigma) ** 2 - np.log(sigma)
            - 0.5 * math.log(2 * math.pi)).sum(1)
    assert abs(lp.mean() - true.mean()) < 0.02
    assert np.abs(lp - true).max() < 0.3


def test_read_table_reports_the_shape_rules(tmp_path):
    np.savez(tmp_path / "m.npz", a=np.zeros((4, 2)), b=np.zeros(3))
    with pytest.raises(DataError, match="key"):
        read_table(tmp_path / "m.npz")
    with pytest.raises(DataError, match="no array named 'z'"):
        read_table(tmp_path / "m.npz", key="z")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataError, match="unknown file type"):
        read_table(tmp_path / "x.xlsx")
