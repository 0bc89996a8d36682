"""The tabular loaders on tiny fixture files written in the real formats."""

import sys

import numpy as np
import pytest
import torch

from cnf.data import tabular
from cnf.data.tabular import TabularDataModule, load
from cnf.errors import ConfigError, DataError


def _write_hepmass_csv(path, rows):
    header = "# label," + ",".join(f"f{i}" for i in range(5)) + ",mass"
    lines = [header] + [",".join(repr(float(v)) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _hepmass_rows(rng, n, train):
    label = (np.arange(n) % 2).astype(float)          # half signal (1), half background (0)
    feats = rng.normal(size=(n, 5))
    feats[:, 2] = rng.integers(0, 3, n)              # few distinct values: must be removed
    mass = rng.choice([999.99, 1000.0], size=n) if train else np.full(n, 1000.0)
    return np.column_stack([label, feats, mass])


def test_power_pipeline_matches_maf_protocol(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(200, 8)) * np.arange(1, 9) * 3 + 10
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", raw)
    train, val, test = load("power", root=tmp_path)
    assert (train.shape, val.shape, test.shape) == ((162, 6), (18, 6), (20, 6))
    assert train.dtype == np.float32
    both = np.vstack([train, val]).astype(np.float64)
    np.testing.assert_allclose(both.mean(0), 0, atol=1e-5)  # train+val statistics
    np.testing.assert_allclose(both.std(0), 1, atol=1e-5)
    # train, val, test in order are an affine image of the RandomState(42)-shuffled rows with
    # columns 3 and 1 dropped, plus uniform noise of widths (0.001, 0.01, 1, 1, 1, 0)
    kept = np.delete(np.delete(raw[np.random.RandomState(42).permutation(200)], 3, 1), 1, 1)
    out = np.vstack([train, val, test]).astype(np.float64)
    widths = np.array([0.001, 0.01, 1.0, 1.0, 1.0, 0.0])
    for j in range(6):
        slope, icpt = np.polyfit(out[:, j], kept[:, j], 1)
        resid = kept[:, j] - (slope * out[:, j] + icpt)
        # noise U[0, w) leaves residuals within +-w (plus float32 rounding of the outputs);
        # a wrong shuffle, split or column gives residuals of the data's scale (>= 3)
        assert np.abs(resid).max() <= widths[j] + 1e-4 * np.abs(kept[:, j]).max(), j
    assert np.abs(np.diff(out[:, 5])).max() > 0


def test_gas_pipeline_drops_meta_and_correlated_columns():
    rng = np.random.default_rng(0)
    n = 300
    a = rng.normal(size=n)
    values = np.column_stack([
        np.arange(n), rng.random(n), rng.random(n),            # Time, Meth, Eth
        a, 2 * a + 1e-3 * rng.normal(size=n), rng.normal(size=n),
    ])
    train, val, test = tabular.preprocess_gas(values, ["Time", "Meth", "Eth", "A", "B", "C"])
    assert (train.shape, val.shape, test.shape) == ((243, 2), (27, 2), (30, 2))
    # A (the first of the correlated pair) is removed; B and C remain, standardized over all rows
    full = np.vstack([train, val, test])
    np.testing.assert_allclose(full.std(0, ddof=1), 1, atol=1e-5)
    c = values[:, 5]
    np.testing.assert_allclose(full[:, 1], (c - c.mean()) / c.std(ddof=1), atol=1e-5)
    # no shuffle: the test rows are the last 30
    np.testing.assert_allclose(test[:, 1], ((c - c.mean()) / c.std(ddof=1))[-30:], atol=1e-5)


def test_gas_file_needs_pandas(tmp_path, monkeypatch):
    (tmp_path / "gas").mkdir()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(DataError, match="pandas"):
        load("gas", root=tmp_path)


def test_gas_pickle_round_trip(tmp_path):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(100, 5)), columns=["Time", "Meth", "Eth", "X", "Y"])
    (tmp_path / "gas").mkdir()
    frame.to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    train, val, test = load("gas", root=tmp_path)
    assert train.shape[1] == 2 and len(test) == 10


def test_hepmass_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "hepmass").mkdir()
    tr_rows, te_rows = _hepmass_rows(rng, 400, True), _hepmass_rows(rng, 100, False)
    _write_hepmass_csv(tmp_path / "hepmass" / "1000_train.csv", tr_rows)
    _write_hepmass_csv(tmp_path / "hepmass" / "1000_test.csv", te_rows)
    train, val, test = load("hepmass", root=tmp_path)
    # 200 signal rows: val = last 20; test keeps its 50 signal rows; the discrete f2 and the
    # mass column are removed -> 4 features
    assert (train.shape, val.shape, test.shape) == ((180, 4), (20, 4), (50, 4))
    sig = tr_rows[tr_rows[:, 0] == 1]
    feats = sig[:, [1, 2, 4, 5]]
    mu, s = feats.mean(0), feats.std(0, ddof=1)
    np.testing.assert_allclose(np.vstack([train, val]), (feats - mu) / s, atol=1e-5)
    te_sig = te_rows[te_rows[:, 0] == 1][:, [1, 2, 4, 5]]
    np.testing.assert_allclose(test, (te_sig - mu) / s, atol=1e-5)  # train statistics


def test_hepmass_truncated_file_is_a_data_error(tmp_path):
    (tmp_path / "hepmass").mkdir()
    _write_hepmass_csv(tmp_path / "hepmass" / "1000_train.csv", np.ones((3, 7)))
    (tmp_path / "hepmass" / "1000_test.csv").write_text("# label,f0,mass\n1,2\n")
    with pytest.raises(DataError, match="truncated"):
        load("hepmass", root=tmp_path)


def test_miniboone_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(100, 43)) * 3 + 1
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", raw)
    train, val, test = load("miniboone", root=tmp_path)
    assert (train.shape, val.shape, test.shape) == ((81, 43), (9, 43), (10, 43))
    mu, s = raw[:90].mean(0), raw[:90].std(0)
    np.testing.assert_allclose(test, (raw[90:] - mu) / s, atol=1e-5)
    np.testing.assert_allclose(val, (raw[81:90] - mu) / s, atol=1e-5)


def test_bsds300_needs_h5py_or_reads_file(tmp_path, monkeypatch):
    (tmp_path / "BSDS300").mkdir()
    path = tmp_path / "BSDS300" / "BSDS300.hdf5"
    try:
        import h5py
    except ImportError:
        path.write_bytes(b"not read")
        monkeypatch.setitem(sys.modules, "h5py", None)
        with pytest.raises(DataError, match="h5py"):
            load("bsds300", root=tmp_path)
        return
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for k, n in (("train", 30), ("validation", 5), ("test", 7)):
            f[k] = rng.normal(size=(n, 63))
    train, val, test = load("bsds300", root=tmp_path)
    assert (train.shape, val.shape, test.shape) == ((30, 63), (5, 63), (7, 63))


@pytest.mark.parametrize("name", list(tabular.MAF_SETS))
def test_missing_file_names_file_path_and_source(tmp_path, monkeypatch, name):
    monkeypatch.setenv("CNF_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        load(name)
    msg = str(info.value)
    rel = tabular.MAF_SETS[name][0]
    assert rel in msg and str((tmp_path / rel).resolve()) in msg
    assert "zenodo.org/record/1161203" in msg and "CNF_DATA_DIR" in msg


def test_sklearn_sets_standardized_and_split():
    train, val, test = load("breast_cancer")
    assert train.shape[1] == 30 and len(train) + len(val) + len(test) == 569
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-4)
    a, b = load("wine", seed=0), load("wine", seed=1)
    assert a[0].shape == (145, 13) and not np.allclose(a[0], b[0])
    with pytest.raises(ConfigError):
        load("nope")


def test_datamodule_serves_batches(tmp_path):
    raw = np.random.default_rng(0).normal(size=(120, 43))
    (tmp_path / "miniboone").mkdir()
    np.save(tmp_path / "miniboone" / "data.npy", raw)
    dm = TabularDataModule("miniboone", root=str(tmp_path), batch_size=16, max_train=50)
    assert dm.dim == 43
    dm.setup("fit")
    (x,) = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 43) and x.dtype == torch.float32
    assert len(dm.train_set) == 50 and dm.event_shape == (43,)
