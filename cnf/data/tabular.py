"""Tabular density-estimation data: the five MAF benchmarks and small sets bundled with
scikit-learn.

**The MAF benchmarks** (Papamakarios et al., 2017, "Masked Autoregressive Flow for Density
Estimation"; the same files and preprocessing are used by FFJORD and Neural Spline Flows, so
test log-likelihoods are comparable with their tables):

=========  ====  ==========================  ==========================================
name       D     file(s) under the data dir  preprocessing (as in the MAF code)
=========  ====  ==========================  ==========================================
power      6     power/data.npy              shuffle (RandomState(42)); drop columns 3
                                             and 1; add uniform noise (gap 0.001,
                                             voltage 0.01, sub-meterings 1, time 0);
                                             test = last 10 %, val = last 10 % of the
                                             rest; standardize with train+val stats
gas        8     gas/ethylene_CO.pickle      drop Meth, Eth, Time; repeatedly drop the
                                             first column correlated > 0.98 with another;
                                             standardize with all rows; test = last 10 %,
                                             val = last 10 % of the rest (no shuffle)
hepmass    21    hepmass/1000_train.csv,     keep label-1 rows; drop the label and, in the
                 hepmass/1000_test.csv       test file, the last column (the mass);
                                             standardize with the training file's stats
                                             (train + val; pandas aligns columns by name);
                                             drop features whose smallest value occurs
                                             > 5 times; val = last 10 % of train
miniboone  43    miniboone/data.npy          test = last 10 %, val = last 10 % of the rest;
                                             standardize with train+val stats
bsds300    63    BSDS300/BSDS300.hdf5        stored already split and preprocessed
                                             (datasets train / validation / test)
=========  ====  ==========================  ==========================================

All five come in one archive, ``data.tar.gz`` of https://zenodo.org/record/1161203 (unpack it
so that the data directory holds ``power/``, ``gas/``, ...). The data directory is the
``root`` argument, else the environment variable ``CNF_DATA_DIR``, else ``./data``. Reading
GAS needs ``pandas`` (the file is a pickled DataFrame) and BSDS300 needs ``h5py``:
``pip install 'cnf[data]'``.

**Bundled sets** (offline, the default for tabular demos and tests): scikit-learn's
``breast_cancer`` (D = 30), ``wine`` (13), ``diabetes`` (10) and ``iris`` (4). They are split
with the same protocol (a seeded shuffle, test = 10 %, val = 10 % of the rest) and
standardized with training statistics.

Example::

    >>> train, val, test = load("wine")          # float32 arrays, standardized
    >>> dm = TabularDataModule("miniboone", root="~/data/maf")   # a LightningDataModule
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnf.data.datamodule import TensorDataModule
from cnf.errors import ConfigError, DataError

__all__ = [
    "MAF_SETS", "SKLEARN_SETS", "NAMES", "data_root", "load", "load_power", "load_gas",
    "load_hepmass", "load_miniboone", "load_bsds300", "load_sklearn", "TabularDataModule",
]

MAF_URL = "https://zenodo.org/record/1161203 (data.tar.gz)"
#: files each MAF benchmark needs, relative to the data directory
MAF_SETS: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
}
SKLEARN_SETS: tuple[str, ...] = ("breast_cancer", "wine", "diabetes", "iris")
NAMES: tuple[str, ...] = tuple(MAF_SETS) + SKLEARN_SETS

Splits = tuple[np.ndarray, np.ndarray, np.ndarray]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data directory: ``root``, else ``$CNF_DATA_DIR``, else ``./data``."""
    if root is None:
        root = os.environ.get("CNF_DATA_DIR") or "data"
    return Path(root).expanduser()


def _require(root: Path, rel: str, name: str, source: str = MAF_URL) -> Path:
    path = root / rel
    if not path.is_file():
        raise DataError(
            f"{name}: missing file {rel!r}, expected at {path.resolve()}. Download it from "
            f"{source}, unpack it under the data directory, and point cnf at that directory "
            f"with the data module's `root` option or the CNF_DATA_DIR environment variable "
            f"(now: {root.resolve()})."
        )
    return path


def _split_tail(data: np.ndarray, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(head, tail)`` with ``tail`` the last ``int(frac * N)`` rows, as the MAF code does."""
    n = int(frac * data.shape[0])
    if n == 0:
        raise DataError(f"too few rows ({data.shape[0]}) to split off {frac:.0%}")
    return data[:-n], data[-n:]


def _three_splits(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MAF's splits: test = the last 10 %, val = the last 10 % of the rest."""
    rest, test = _split_tail(data)
    train, val = _split_tail(rest)
    return train, val, test


def _standardize_train_val(data: np.ndarray) -> Splits:
    """MAF's splits standardized by the mean and std of train and val together."""
    train, val, test = _three_splits(data)
    return _standardize(train, val, test, np.vstack((train, val)))


def _standardize(train: np.ndarray, val: np.ndarray, test: np.ndarray, stats: np.ndarray) -> Splits:
    mu, s = stats.mean(axis=0), stats.std(axis=0)
    return tuple(((a - mu) / s).astype(np.float32) for a in (train, val, test))  # type: ignore[return-value]


# -- POWER ------------------------------------------------------------------------------------
def preprocess_power(data: np.ndarray) -> Splits:
    """MAF's POWER pipeline on the raw ``[N, 8]`` array of ``power/data.npy`` (active power,
    reactive power, voltage, intensity, sub-meterings 1-3, time; reactive power and intensity
    are dropped)."""
    if data.ndim != 2 or data.shape[1] != 8:
        raise DataError(f"power/data.npy should hold an [N, 8] array, got shape {data.shape}")
    rng = np.random.RandomState(42)
    data = np.array(data, dtype=np.float64)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    # the noise is drawn in this order (voltage, gap, sub-meterings): the seed fixes the values
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    return _standardize_train_val(data)


def load_power(root: str | os.PathLike | None = None) -> Splits:
    """POWER (D = 6): train / val / test float32 arrays."""
    path = _require(data_root(root), MAF_SETS["power"][0], "power")
    return preprocess_power(np.load(path))


# -- GAS --------------------------------------------------------------------------------------
def preprocess_gas(values: np.ndarray, columns: list[str]) -> Splits:
    """MAF's GAS pipeline on the DataFrame of ``ethylene_CO.pickle`` given as its values and
    column names."""
    columns = list(columns)
    missing = [c for c in ("Meth", "Eth", "Time") if c not in columns]
    if missing:
        raise DataError(f"gas/ethylene_CO.pickle lacks the columns {missing}; is it the MAF file?")
    keep = [i for i, c in enumerate(columns) if c not in ("Meth", "Eth", "Time")]
    data = np.asarray(values, dtype=np.float64)[:, keep]

    def correlated(d: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(d, rowvar=False)
        return (c > 0.98).sum(axis=1)

    b = correlated(data)
    while np.any(b > 1):
        data = np.delete(data, int(np.where(b > 1)[0][0]), axis=1)
        b = correlated(data)
    data = (data - data.mean(axis=0)) / data.std(axis=0, ddof=1)  # pandas' std
    train, val, test = _three_splits(data)
    return tuple(a.astype(np.float32) for a in (train, val, test))  # type: ignore[return-value]


def _read_pickled_frame(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        import pandas as pd
    except ImportError:
        raise DataError(
            f"reading {path} needs pandas (the GAS file is a pickled pandas DataFrame): "
            f"pip install 'cnf[data]' (or pip install pandas)"
        ) from None
    frame = pd.read_pickle(path)
    return frame.to_numpy(dtype=np.float64), [str(c) for c in frame.columns]


def load_gas(root: str | os.PathLike | None = None) -> Splits:
    """GAS (D = 8): train / val / test float32 arrays. Needs pandas."""
    path = _require(data_root(root), MAF_SETS["gas"][0], "gas")
    return preprocess_gas(*_read_pickled_frame(path))


# -- HEPMASS ----------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    """Header names and float rows, as ``pandas.read_csv(path, index_col=False)`` reads them:
    rows with more fields than the header lose the trailing extras."""
    with open(path) as f:
        header = [h.strip() for h in f.readline().rstrip("\n").split(",")]
        rows = []
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split(",")
            if len(fields) < len(header):
                raise DataError(f"{path}:{lineno}: {len(fields)} fields, the header has "
                                f"{len(header)}; the file looks truncated")
            rows.append([float(v) for v in fields[: len(header)]])
    return header, np.asarray(rows, dtype=np.float64).reshape(-1, len(header))


def preprocess_hepmass(train_csv: tuple[list[str], np.ndarray],
                       test_csv: tuple[list[str], np.ndarray]) -> Splits:
    """MAF's HEPMASS pipeline on the parsed ``1000_train.csv`` and ``1000_test.csv``."""
    (names_tr, tr), (names_te, te) = train_csv, test_csv
    tr = tr[tr[:, 0] == 1][:, 1:]
    names_tr = names_tr[1:]
    te = te[te[:, 0] == 1][:, 1:-1]  # the MAF code drops the test file's last column (mass)
    names_te = names_te[1:-1]
    mu, s = tr.mean(axis=0), tr.std(axis=0, ddof=1)  # pandas' mean/std
    tr = (tr - mu) / s
    # pandas aligns (test - mu) / s by column name: a train column absent from test is NaN there
    index = {n: i for i, n in enumerate(names_tr)}
    aligned = np.full((te.shape[0], len(names_tr)), np.nan)
    for j, name in enumerate(names_te):
        if name in index:
            i = index[name]
            aligned[:, i] = (te[:, j] - mu[i]) / s[i]
    # "remove any features that have too many re-occurring real values": the MAF code counts
    # the occurrences of each feature's *smallest* value and drops the feature if > 5
    remove = []
    for i in range(tr.shape[1]):
        _, counts = np.unique(tr[:, i], return_counts=True)
        if counts[0] > 5:
            remove.append(i)
    keep = [i for i in range(tr.shape[1]) if i not in remove]
    tr, te = tr[:, keep], aligned[:, keep]
    if not (np.isfinite(tr).all() and np.isfinite(te).all()):
        raise DataError("HEPMASS preprocessing left NaN/inf values: the csv files do not have "
                        "the columns of the MAF release (label, 27 features, mass)")
    train, val = _split_tail(tr)
    return train.astype(np.float32), val.astype(np.float32), te.astype(np.float32)


def load_hepmass(root: str | os.PathLike | None = None) -> Splits:
    """HEPMASS (D = 21): train / val / test float32 arrays."""
    r = data_root(root)
    paths = [_require(r, rel, "hepmass") for rel in MAF_SETS["hepmass"]]
    return preprocess_hepmass(_read_csv(paths[0]), _read_csv(paths[1]))


# -- MINIBOONE --------------------------------------------------------------------------------
def preprocess_miniboone(data: np.ndarray) -> Splits:
    """MAF's MINIBOONE split and standardization on ``miniboone/data.npy`` (``[N, 43]``, already
    cleaned of outliers and discrete features by the MAF authors)."""
    data = np.asarray(data, dtype=np.float64)
    return _standardize_train_val(data)


def load_miniboone(root: str | os.PathLike | None = None) -> Splits:
    """MINIBOONE (D = 43): train / val / test float32 arrays."""
    path = _require(data_root(root), MAF_SETS["miniboone"][0], "miniboone")
    return preprocess_miniboone(np.load(path))


# -- BSDS300 ----------------------------------------------------------------------------------
def load_bsds300(root: str | os.PathLike | None = None) -> Splits:
    """BSDS300 patches (D = 63): the stored train / validation / test sets. Needs h5py."""
    path = _require(data_root(root), MAF_SETS["bsds300"][0], "bsds300")
    try:
        import h5py
    except ImportError:
        raise DataError(
            f"reading {path} needs h5py: pip install 'cnf[data]' (or pip install h5py)"
        ) from None
    with h5py.File(path, "r") as f:
        missing = [k for k in ("train", "validation", "test") if k not in f]
        if missing:
            raise DataError(f"{path} lacks the datasets {missing}; is it the MAF file?")
        return tuple(np.asarray(f[k][:], dtype=np.float32)  # type: ignore[return-value]
                     for k in ("train", "validation", "test"))


# -- scikit-learn sets ------------------------------------------------------------------------
def load_sklearn(name: str, seed: int = 0) -> Splits:
    """A scikit-learn bundled set: seeded shuffle, test = last 10 %, val = last 10 % of the
    rest, standardized with training statistics (constant columns are left at zero)."""
    from sklearn import datasets as skd

    loaders: dict[str, Callable] = {
        "breast_cancer": skd.load_breast_cancer, "wine": skd.load_wine,
        "diabetes": skd.load_diabetes, "iris": skd.load_iris,
    }
    if name not in loaders:
        raise ConfigError(f"unknown scikit-learn set {name!r}; choose one of {sorted(loaders)}")
    data = np.asarray(loaders[name]().data, dtype=np.float64)
    data = data[np.random.RandomState(seed).permutation(len(data))]
    train, val, test = _three_splits(data)
    mu, s = train.mean(axis=0), train.std(axis=0)
    s = np.where(s > 0, s, 1.0)
    return tuple(((a - mu) / s).astype(np.float32) for a in (train, val, test))  # type: ignore[return-value]


_LOADERS: dict[str, Callable[[str | os.PathLike | None], Splits]] = {
    "power": load_power, "gas": load_gas, "hepmass": load_hepmass,
    "miniboone": load_miniboone, "bsds300": load_bsds300,
}


def load(name: str, root: str | os.PathLike | None = None, seed: int = 0) -> Splits:
    """``(train, val, test)`` float32 arrays ``[N, D]`` of the tabular set ``name``."""
    if name in _LOADERS:
        return _LOADERS[name](root)
    if name in SKLEARN_SETS:
        return load_sklearn(name, seed)
    raise ConfigError(f"unknown tabular dataset {name!r}; choose one of: {', '.join(NAMES)}")


class TabularDataModule(TensorDataModule):
    """Train / val / test splits of a tabular set (see the module docstring for the list).

    Args:
        name: ``power``, ``gas``, ``hepmass``, ``miniboone``, ``bsds300`` (files needed) or
            ``breast_cancer``, ``wine``, ``diabetes``, ``iris`` (bundled with scikit-learn).
        root: data directory of the MAF files (default: ``$CNF_DATA_DIR`` or ``./data``).
        batch_size, eval_batch_size: training and evaluation batch sizes.
        seed: shuffle seed of the scikit-learn sets (the MAF splits are fixed).
        max_train: keep only the first that many training rows (quick runs; ``None``: all).
    """

    def __init__(
        self,
        name: str = "breast_cancer",
        root: str | None = None,
        batch_size: int = 512,
        eval_batch_size: int = 5_000,
        seed: int = 0,
        max_train: int | None = None,
        num_workers: int = 0,
    ):
        if name not in NAMES:
            raise ConfigError(f"unknown tabular dataset {name!r}; choose one of: {', '.join(NAMES)}")
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers)
        self.name, self.root, self.seed, self.max_train = name, root, seed, max_train
        self._splits: dict[str, torch.Tensor] | None = None

    def _load(self) -> dict[str, torch.Tensor]:
        if self._splits is None:
            train, val, test = load(self.name, self.root, self.seed)
            if self.max_train is not None:
                train = train[: self.max_train]
            self._splits = {k: torch.from_numpy(np.ascontiguousarray(v))
                            for k, v in zip(("train", "val", "test"), (train, val, test))}
            self.event_shape = (int(train.shape[1]),)
        return self._splits

    @property
    def dim(self) -> int:
        """Data dimension D (loads the data)."""
        return int(self._load()["train"].shape[1])

    def make_split(self, split: str) -> torch.Tensor:
        return self._load()[split]
