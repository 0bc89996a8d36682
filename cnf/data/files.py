"""Your own data: fit a density, or a conditional density ``p(x | c)``, to a file.

:class:`FileDataModule` reads one table and serves batches ``(x,)`` or, with
``context_columns``, ``(x, context)``.

=============================  ==============================================================
format                         how it is read
=============================  ==============================================================
``.csv``, ``.tsv``, ``.txt``   text, comma / tab / whitespace separated (``delimiter`` to
                               force one); a header row is detected (a first row with a
                               non-number in it) unless ``header`` says; empty, ``NA``,
                               ``nan`` and ``null`` fields are missing values (NaN)
``.npy``                       a 2-D array ``[rows, columns]`` (1-D: one column); columns by
                               index
``.npz``                       ``key`` names a 2-D array; without ``key``: the only array,
                               or several 1-D arrays of one length as named columns
``.h5``, ``.hdf5``             (h5py) the same rules as ``.npz`` for its datasets
``.parquet``, ``.pq``          pandas + pyarrow (``pip install 'cnf[data]'``)
=============================  ==============================================================

**Columns.** ``columns`` (names or 0-based indices) are ``x``; ``context_columns`` are
``c``; everything else is ignored. Without ``columns``, every numeric column that is neither
a context column nor the ``split_column`` is ``x``. ``dim`` and ``context_dim`` are read from
the file, and ``cnf fit`` writes them into the model's config (:func:`fill_model_dims`: the
flow's ``dim`` / ``context_dim`` and the base's ``shape``, whatever the model config says), so
one model config serves every file and the run's resolved config records the real values.

**Splits.** A seeded shuffle with ``val_fraction`` / ``test_fraction`` of the rows; or
explicit files ``val_path`` / ``test_path`` (then ``path`` is the training file); or a
``split_column`` whose values are ``train`` / ``val`` (``valid``, ``validation``) / ``test``
(or 0 / 1 / 2). :meth:`FileDataModule.summary` records the method, seed and sizes.

**Standardization** (``standardize``): ``meanstd`` (``(v - mean) / std``), ``minmax``
(``(v - min) / (max - min)``) or ``none``, from the training split only, for ``x`` and the
context alike. The statistics are part of the data module's ``state_dict`` (Lightning
stores it in every checkpoint), so ``cnf test`` / ``cnf predict`` from a checkpoint apply the
training standardization to any file. The model sees standardized ``x``;
``log p(x_original) = log p(x_standardized) + log_prob_offset`` with
``log_prob_offset = -Σ log scale`` over the ``x`` columns. ``DensityEstimation`` logs both:
``val/nll`` in the model's (standardized) units and ``val/nll_original_units``.

**Bad input** raises :class:`cnf.errors.DataError` naming the file, the file row (0-based
data row; for text files also the line) and the column: a missing file, NaN / inf (or, with
``nan_policy="drop"``, such rows are dropped and counted), a non-numeric column, a constant
column, fewer training rows than a batch.

Example::

    >>> dm = FileDataModule("events.csv", context_columns=["energy"])   # doctest: +SKIP
    >>> dm.dim, dm.context_dim                                          # doctest: +SKIP
    (4, 1)
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from cnf.errors import ConfigError, DataError

__all__ = ["Table", "read_table", "FileDataModule", "fill_model_dims"]

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")
NUMPY_SUFFIXES = (".npy", ".npz")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUFFIXES = TEXT_SUFFIXES + NUMPY_SUFFIXES + HDF5_SUFFIXES + PARQUET_SUFFIXES
_MISSING = {"", "na", "nan", "n/a", "null", "none"}
_SPLIT_NAMES = {"train": "train", "training": "train", "0": "train",
                "val": "val", "valid": "val", "validation": "val", "1": "val",
                "test": "test", "testing": "test", "2": "test"}

Column = str | int


_FLOW = "model.init_args.density.init_args.flow.init_args"
_BASE = "model.init_args.density.init_args.base.init_args"
_SCHEMA_ARGS = ("path", "columns", "context_columns", "split_column", "key", "header", "delimiter")


def fill_model_dims(cfg: Any) -> dict[str, int] | None:
    """Give the model the dimensions of a user file, in a parsed ``cnf fit`` config.

    When ``cfg.data`` is a :class:`FileDataModule`, read the file's columns and set the flow's
    ``dim`` and ``context_dim`` and the base distribution's ``shape`` wherever the config has
    those keys (overriding what a reused model config says). The values land in the run's
    resolved config, so a run reloads without the file's help. Returns the dimensions, or
    ``None`` for other data modules (their configs are left as they are)."""
    data = cfg.get("data") if hasattr(cfg, "get") else None
    if data is None or not str(data.get("class_path", "")).endswith(".FileDataModule"):
        return None
    init = data.get("init_args")
    kw = {k: init.get(k) for k in _SCHEMA_ARGS if init is not None and k in init}
    dm = FileDataModule(**{k: v for k, v in kw.items() if v is not None})
    dims = {"dim": dm.dim, "context_dim": dm.context_dim}
    for key, value in ((f"{_FLOW}.dim", dims["dim"]), (f"{_FLOW}.context_dim", dims["context_dim"]),
                       (f"{_BASE}.shape", dims["dim"])):
        try:
            present = key in cfg
        except (KeyError, TypeError, AttributeError):
            present = False
        if present:
            cfg[key] = value
        elif key.endswith(".context_dim") and value:
            raise ConfigError(
                f"the data has {value} context column(s) but the flow "
                f"({cfg.get(_FLOW.rsplit('.', 1)[0] + '.class_path')}) takes no context_dim; "
                f"use a conditional family (MAF, IAF, NSF, RealNVP, CNF/FFJORD) or drop "
                f"`context_columns`")
    return dims


# -- reading ----------------------------------------------------------------------------------
@dataclass
class Table:
    """A file read as columns.

    ``values`` is ``[rows, columns]`` float64 (NaN where missing or not a number); for a
    column that is not numeric, ``bad[j] = (row, text)`` is its first non-number and
    ``text[j]`` keeps its raw strings. ``line_offset`` turns a 0-based data row into a file
    line (text files; ``None`` otherwise)."""

    path: Path
    names: list[str]
    values: np.ndarray
    bad: dict[int, tuple[int, str]] = field(default_factory=dict)
    text: dict[int, list[str]] = field(default_factory=dict)
    line_offset: int | None = None

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    def where(self, row: int) -> str:
        """``"row 37 (line 39)"``: a data row as the user finds it in the file."""
        line = f" (line {row + self.line_offset})" if self.line_offset is not None else ""
        return f"row {row}{line}"

    def column(self, key: Column, role: str = "column") -> int:
        """Index of a column given by name or 0-based index."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            j = int(key)
            if not -len(self.names) <= j < len(self.names):
                raise DataError(f"{self.path}: {role} {j} is out of range; the file has "
                                f"{len(self.names)} columns (0-based: 0..{len(self.names) - 1})")
            return j % len(self.names)
        key = str(key)
        if key in self.names:
            return self.names.index(key)
        if key.lstrip("-").isdigit():
            return self.column(int(key), role)
        raise DataError(f"{self.path}: no {role} named {key!r}; the file's columns are "
                        f"{_short(self.names)}")

    def is_numeric(self, j: int) -> bool:
        return j not in self.bad


def _short(names: Sequence[Any], n: int = 20) -> str:
    names = list(names)
    more = f" ... ({len(names)} in all)" if len(names) > n else ""
    return "[" + ", ".join(repr(v) for v in names[:n]) + more + "]"


def _to_float(text: str) -> float | None:
    t = text.strip()
    if t.lower() in _MISSING:
        return math.nan
    try:
        return float(t)
    except ValueError:
        return None


def _read_text(path: Path, header: bool | None, delimiter: str | None) -> Table:
    with open(path, newline="") as f:
        lines = [(i, ln) for i, ln in enumerate(f, start=1) if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise DataError(f"{path}: the file is empty")
    if delimiter is None:
        first = lines[0][1]
        delimiter = "\t" if path.suffix == ".tsv" or "\t" in first else (
            "," if "," in first else (";" if ";" in first else None))
    if delimiter is None:
        rows = [ln.split() for _, ln in lines]
    else:
        rows = list(csv.reader([ln for _, ln in lines], delimiter=delimiter))
    linenos = [i for i, _ in lines]
    if header is None:
        header = any(_to_float(v) is None for v in rows[0])
    if header:
        names = [v.strip() for v in rows[0]]
        rows, linenos = rows[1:], linenos[1:]
    else:
        names = [str(j) for j in range(len(rows[0]))]
    width = len(names)
    values = np.full((len(rows), width), np.nan)
    bad: dict[int, tuple[int, str]] = {}
    text: dict[int, list[str]] = {j: [] for j in range(width)}
    for r, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: line {linenos[r]} has {len(row)} fields, the "
                            f"{'header' if header else 'first row'} has {width}; fix the file "
                            f"or set the data module's `delimiter`")
        for j, v in enumerate(row):
            text[j].append(v.strip())
            x = _to_float(v)
            if x is None:
                bad.setdefault(j, (r, v.strip()))
            else:
                values[r, j] = x
    text = {j: t for j, t in text.items() if j in bad}
    # data rows are numbered 0.. ; their lines are consecutive unless blank/comment lines intervene
    offset = linenos[0] if linenos else (2 if header else 1)
    contiguous = all(b - a == 1 for a, b in zip(linenos, linenos[1:]))
    return Table(path, names, values, bad, text, offset if contiguous else None)


def _from_arrays(path: Path, arrays: dict[str, np.ndarray], key: str | None, kind: str) -> Table:
    if key is not None:
        if key not in arrays:
            raise DataError(f"{path}: no {kind} named {key!r}; it holds {_short(arrays)}")
        arrays = {key: arrays[key]}
    if len(arrays) == 1:
        (name, a), = arrays.items()
        a = np.asarray(a)
        if a.ndim == 1:
            return _table_from_columns(path, {name: a})
        if a.ndim != 2:
            raise DataError(f"{path}: {kind} {name!r} has shape {a.shape}; a table needs "
                            f"[rows, columns] (reshape it to 2-D)")
        return _table_from_columns(path, {str(j): a[:, j] for j in range(a.shape[1])})
    lengths = {n: np.asarray(a).shape for n, a in arrays.items()}
    if all(len(s) == 1 for s in lengths.values()) and len({s[0] for s in lengths.values()}) == 1:
        return _table_from_columns(path, {n: np.asarray(a) for n, a in arrays.items()})
    raise DataError(f"{path} holds several {kind}s {_short(arrays)} with shapes "
                    f"{list(lengths.values())[:10]}; name one with the data module's `key` "
                    f"(or store 1-D {kind}s of one length, one per column)")


def _table_from_columns(path: Path, columns: dict[str, np.ndarray]) -> Table:
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    values = np.full((n, len(names)), np.nan)
    bad: dict[int, tuple[int, str]] = {}
    text: dict[int, list[str]] = {}
    for j, name in enumerate(names):
        col = np.asarray(columns[name])
        if col.dtype.kind in "biuf":
            values[:, j] = col.astype(np.float64)
            continue
        strings = [v.decode() if isinstance(v, bytes) else ("" if v is None else str(v))
                   for v in col.tolist()]
        text[j] = strings
        for r, s in enumerate(strings):
            x = _to_float(s)
            if x is None:
                bad.setdefault(j, (r, s))
            else:
                values[r, j] = x
    return Table(path, names, values, bad, {j: t for j, t in text.items() if j in bad})


def _read_hdf5(path: Path, key: str | None) -> Table:
    try:
        import h5py
    except ImportError:
        raise DataError(f"reading {path} needs h5py: pip install 'cnf[data]'") from None
    with h5py.File(path, "r") as f:
        node = f[key] if key is not None and key in f else f
        if key is not None and key not in f:
            raise DataError(f"{path}: no dataset named {key!r}; it holds {_short(list(f))}")
        if isinstance(node, h5py.Dataset):
            return _from_arrays(path, {key: node[()]}, None, "dataset")
        arrays = {n: d[()] for n, d in node.items() if isinstance(d, h5py.Dataset)}
    if not arrays:
        raise DataError(f"{path}: no datasets found; name one with the data module's `key`")
    return _from_arrays(path, arrays, None, "dataset")


def _read_parquet(path: Path) -> Table:
    try:
        import pandas as pd
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise DataError(f"reading {path} needs pandas and pyarrow: pip install 'cnf[data]' "
                        f"({exc})") from None
    return _table_from_columns(path, {str(c): frame[c].to_numpy() for c in frame.columns})


def read_table(path: str | os.PathLike, key: str | None = None, header: bool | None = None,
               delimiter: str | None = None) -> Table:
    """Read ``path`` (any format of the module docstring) as a :class:`Table`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path} (resolved: {path.resolve()}); pass an "
                        f"existing file, e.g. --data.init_args.path my.csv")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _read_text(path, header, delimiter)
    if suffix == ".npy":
        return _from_arrays(path, {path.stem: np.load(path, allow_pickle=False)}, None, "array")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return _from_arrays(path, {k: z[k] for k in z.files}, key, "array")
    if suffix in HDF5_SUFFIXES:
        return _read_hdf5(path, key)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    raise DataError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


# -- the data module ----------------------------------------------------------------------------
class FileDataModule(L.LightningDataModule):
    """Density estimation on a user file; see the module docstring.

    Args:
        path: the data file (with ``val_path`` / ``test_path``: the training file).
        columns: ``x`` columns by name or 0-based index (default: every numeric column that
            is not a context or split column).
        context_columns: conditioning columns ``c`` (default none: unconditional).
        val_path, test_path: explicit validation / test files (same columns).
        split_column: a column holding ``train`` / ``val`` / ``test`` (or 0 / 1 / 2).
        val_fraction, test_fraction, seed: the seeded random split when no file or column
            gives one.
        standardize: ``meanstd``, ``minmax`` or ``none`` (statistics of the training split).
        nan_policy: ``raise`` on NaN / inf in a used column, or ``drop`` those rows (counted
            in :meth:`summary` and logged).
        predict_path: the file ``cnf predict`` scores (default: the test split).
        key: array / dataset name in ``.npz`` / HDF5 files.
        header, delimiter: text files: force a header row (or none) / a delimiter.
        batch_size, eval_batch_size, num_workers: loaders.
        dtype: ``float32`` or ``float64`` batches.
    """

    def __init__(
        self,
        path: str | None = None,
        columns: list[Column] | None = None,
        context_columns: list[Column] | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        split_column: Column | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        standardize: Literal["meanstd", "minmax", "none"] = "meanstd",
        nan_policy: Literal["raise", "drop"] = "raise",
        predict_path: str | None = None,
        key: str | None = None,
        header: bool | None = None,
        delimiter: str | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 4096,
        num_workers: int = 0,
        dtype: Literal["float32", "float64"] = "float32",
    ):
        super().__init__()
        if not path:
            raise DataError(
                "FileDataModule needs a data file: pass --data.init_args.path my.csv (CSV/TSV, "
                ".npy, .npz, .parquet or HDF5; see README 'Your own data')")
        if standardize not in ("meanstd", "minmax", "none"):
            raise ConfigError(f"standardize must be meanstd, minmax or none, got {standardize!r}")
        if nan_policy not in ("raise", "drop"):
            raise ConfigError(f"nan_policy must be raise or drop, got {nan_policy!r}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
                and val_fraction + test_fraction < 1):
            raise ConfigError(f"val_fraction ({val_fraction}) and test_fraction "
                              f"({test_fraction}) must be in [0, 1) with a sum below 1")
        for option, value in (("path", path), ("val_path", val_path), ("test_path", test_path),
                              ("predict_path", predict_path)):
            if value is not None and not Path(value).expanduser().is_file():
                raise DataError(f"data file not found: {value} (resolved: "
                                f"{Path(value).expanduser().resolve()}); pass an existing file "
                                f"as --data.init_args.{option}")
        self.path = path
        self.columns = list(columns) if columns is not None else None
        self.context_columns = list(context_columns or [])
        self.val_path, self.test_path = val_path, test_path
        self.split_column = split_column
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.standardize = standardize
        self.nan_policy = nan_policy
        self.predict_path = predict_path
        self.key, self.header, self.delimiter = key, header, delimiter
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.dtype = getattr(torch, dtype)
        self.name = Path(path).stem
        self._tables: dict[str, Table] = {}
        self._schema: tuple[list[str], list[str]] | None = None
        self._splits: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray]] = {}
        self._stats: dict[str, Any] | None = None
        self._split_info: dict[str, Any] = {}
        self._dropped: dict[str, int] = {}
        self._checked_train: np.ndarray | None = None

    # -- schema ---------------------------------------------------------------------------------
    def _table(self, path: str) -> Table:
        if path not in self._tables:
            self._tables[path] = read_table(path, self.key, self.header, self.delimiter)
        return self._tables[path]

    def _select(self, table: Table) -> tuple[list[int], list[int]]:
        """Indices of the x and context columns in ``table``."""
        ctx = [table.column(c, "context column") for c in self.context_columns]
        skip = set(ctx)
        if self.split_column is not None:
            skip.add(table.column(self.split_column, "split column"))
        if self.columns is not None:
            xs = [table.column(c, "column") for c in self.columns]
        else:
            xs = [j for j in range(len(table.names)) if j not in skip and table.is_numeric(j)]
            ignored = [table.names[j] for j in range(len(table.names))
                       if j not in skip and not table.is_numeric(j)]
            if ignored:
                log.info("%s: ignoring non-numeric columns %s", table.path, ignored)
        both = set(xs) & set(ctx)
        if both:
            raise DataError(f"{table.path}: columns {[table.names[j] for j in sorted(both)]} "
                            f"are both data and context columns; list each in one place")
        if not xs:
            raise DataError(f"{table.path}: no numeric data columns (columns: "
                            f"{_short(table.names)}); set the data module's `columns`")
        for j in xs + ctx:
            if not table.is_numeric(j):
                row, text = table.bad[j]
                raise DataError(
                    f"{table.path}: column {table.names[j]!r} is not numeric: {text!r} at "
                    f"{table.where(row)}; fix the file, or leave the column out of `columns` / "
                    f"`context_columns` (non-numeric columns are ignored by default)")
        return xs, ctx

    def _names(self) -> tuple[list[str], list[str]]:
        if self._schema is None:
            t = self._table(self.path)
            xs, ctx = self._select(t)
            self._schema = ([t.names[j] for j in xs], [t.names[j] for j in ctx])
        return self._schema

    @property
    def dim(self) -> int:
        """Number of ``x`` columns (read from the file)."""
        return len(self._names()[0])

    @property
    def context_dim(self) -> int:
        """Number of context columns (0: unconditional)."""
        return len(self._names()[1])

    @property
    def x_names(self) -> list[str]:
        return list(self._names()[0])

    @property
    def context_names(self) -> list[str]:
        return list(self._names()[1])

    # -- arrays ---------------------------------------------------------------------------------
    def _extract(self, path: str, rows: np.ndarray | None = None, role: str = "data"
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(x, context, file_rows)`` of ``path`` (raw values), NaN/inf handled."""
        t = self._table(path)
        x_names, c_names = self._names()
        xs = [t.column(n) for n in x_names]
        ctx = [t.column(n, "context column") for n in c_names]
        if path != self.path:  # another file must have the columns the model was built for
            self._select_check(t, xs + ctx)
        idx = np.arange(t.rows) if rows is None else rows
        used = xs + ctx
        block = t.values[np.ix_(idx, used)]
        finite = np.isfinite(block)
        if not finite.all():
            bad_rows = np.nonzero(~finite.all(axis=1))[0]
            if self.nan_policy == "raise":
                r = int(bad_rows[0])
                j = int(np.nonzero(~finite[r])[0][0])
                value = block[r, j]
                raise DataError(
                    f"{t.path}: {'NaN' if np.isnan(value) else value} in column "
                    f"{t.names[used[j]]!r} at {t.where(int(idx[r]))} ({len(bad_rows)} row(s) "
                    f"with NaN/inf in all); clean the file, or set --data.init_args.nan_policy "
                    f"drop to drop such rows")
            keep = finite.all(axis=1)
            self._dropped[f"{role}:{t.path}"] = int((~keep).sum())
            log.warning("%s: dropped %d %s row(s) with NaN/inf (nan_policy=drop)", t.path,
                        int((~keep).sum()), role)
            idx, block = idx[keep], block[keep]
        x = block[:, : len(xs)]
        c = block[:, len(xs):] if ctx else None
        return x, c, idx

    def _select_check(self, t: Table, used: list[int]) -> None:
        for j in used:
            if not t.is_numeric(j):
                row, text = t.bad[j]
                raise DataError(f"{t.path}: column {t.names[j]!r} is not numeric: {text!r} at "
                                f"{t.where(row)}")

    def _split_rows(self) -> dict[str, np.ndarray]:
        """0-based file rows of each split drawn from ``path``."""
        t = self._table(self.path)
        n = t.rows
        if self.split_column is not None:
            j = t.column(self.split_column, "split column")
            raw = t.text.get(j) or [f"{v:g}" if np.isfinite(v) else "" for v in t.values[:, j]]
            labels = []
            for r, v in enumerate(raw):
                s = _SPLIT_NAMES.get(v.strip().lower())
                if s is None:
                    raise DataError(f"{t.path}: split column {t.names[j]!r} holds {v!r} at "
                                    f"{t.where(r)}; use train / val / test (or 0 / 1 / 2)")
                labels.append(s)
            labels_a = np.asarray(labels)
            self._split_info = {"method": "column", "split_column": t.names[j]}
            out = {s: np.nonzero(labels_a == s)[0] for s in ("train", "val", "test")}
            for s in ("val", "test"):
                other = self.val_path if s == "val" else self.test_path
                if other is not None:
                    out.pop(s)
            return out
        perm = np.random.default_rng(self.seed).permutation(n)
        n_test = 0 if self.test_path else int(round(self.test_fraction * n))
        n_val = 0 if self.val_path else int(round(self.val_fraction * n))
        out = {"train": np.sort(perm[n_test + n_val:])}
        if not self.val_path:
            out["val"] = np.sort(perm[n_test:n_test + n_val])
        if not self.test_path:
            out["test"] = np.sort(perm[:n_test])
        files = [p for p in (self.val_path, self.test_path) if p]
        self._split_info = {"method": "files" if len(files) == 2 else "fraction",
                            "seed": self.seed, "val_fraction": 0.0 if self.val_path else
                            self.val_fraction,
                            "test_fraction": 0.0 if self.test_path else self.test_fraction}
        return out

    def _load_splits(self) -> None:
        if self._splits:
            return
        rows = self._split_rows()
        for split in ("train", "val", "test"):
            other = {"val": self.val_path, "test": self.test_path}.get(split)
            if other is not None:
                self._splits[split] = self._extract(other, None, split)
            else:
                self._splits[split] = self._extract(self.path, rows[split], split)
        sizes = {s: int(len(v[0])) for s, v in self._splits.items()}
        self._split_info["sizes"] = sizes
        for split, n in sizes.items():
            if n == 0:
                raise DataError(
                    f"{self.path}: the {split} split is empty ({sizes}); give the file more rows, "
                    f"raise --data.init_args.{split}_fraction, or pass a {split}_path")
        if sizes["train"] < self.batch_size:
            raise DataError(
                f"{self.path}: the training split has {sizes['train']} rows, fewer than one batch "
                f"(batch_size={self.batch_size}); lower --data.init_args.batch_size (e.g. "
                f"{max(1, sizes['train'] // 4)}) or use a larger file")
        log.info("%s: %d rows -> train %d / val %d / test %d (%s)", self.path,
                 self._table(self.path).rows, sizes["train"], sizes["val"], sizes["test"],
                 self._split_info["method"])

    # -- standardization ------------------------------------------------------------------------
    def _fit_stats(self) -> None:
        x, c, idx = self._splits["train"]
        t = self._table(self.path)
        x_names, c_names = self._names()

        def stats(a: np.ndarray, names: list[str]) -> tuple[list[float], list[float]]:
            lo, hi = a.min(axis=0), a.max(axis=0)
            for k, name in enumerate(names):
                if hi[k] == lo[k]:
                    raise DataError(
                        f"{t.path}: column {name!r} is constant ({lo[k]:g}) in the training "
                        f"split; a density over it is degenerate: leave it out of `columns` / "
                        f"`context_columns`")
            if self.standardize == "meanstd":
                return a.mean(axis=0).tolist(), a.std(axis=0).tolist()
            if self.standardize == "minmax":
                return lo.tolist(), (hi - lo).tolist()
            return [0.0] * a.shape[1], [1.0] * a.shape[1]

        xs, xsc = stats(x, x_names)
        cs, csc = stats(c, c_names) if c is not None else ([], [])
        self._stats = {"standardize": self.standardize, "columns": x_names,
                       "context_columns": c_names, "x_shift": xs, "x_scale": xsc,
                       "c_shift": cs, "c_scale": csc}

    def state_dict(self) -> dict[str, Any]:
        """The training standardization (saved in checkpoints by Lightning)."""
        return dict(self._stats) if self._stats is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        x_names, c_names = self._names()
        if list(state["columns"]) != x_names or list(state["context_columns"]) != c_names:
            raise DataError(
                f"the checkpoint was trained on columns {state['columns']} with context "
                f"{state['context_columns']}, but this data module selects {x_names} with "
                f"context {c_names}; set `columns` / `context_columns` as in training")
        self._stats = dict(state)

    def _transform(self, a: np.ndarray, shift: list[float], scale: list[float]) -> torch.Tensor:
        out = (a - np.asarray(shift)) / np.asarray(scale)
        return torch.as_tensor(out, dtype=self.dtype)

    def transform(self, x: np.ndarray, context: np.ndarray | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw ``x`` ``[N, dim]`` (and context) to the model's standardized tensors."""
        s = self._require_stats()
        xt = self._transform(np.asarray(x, dtype=np.float64), s["x_shift"], s["x_scale"])
        ct = (self._transform(np.asarray(context, dtype=np.float64), s["c_shift"], s["c_scale"])
              if context is not None and self.context_dim else None)
        return xt, ct

    def inverse_transform(self, x: torch.Tensor) -> np.ndarray:
        """Model-space ``x`` back to the file's units (e.g. for samples)."""
        s = self._require_stats()
        return x.detach().cpu().double().numpy() * np.asarray(s["x_scale"]) + np.asarray(s["x_shift"])

    def _require_stats(self) -> dict[str, Any]:
        if self._stats is None:
            self._load_splits()
            self._fit_stats()
        assert self._stats is not None
        return self._stats

    @property
    def log_prob_offset(self) -> float:
        """Add to a model log-likelihood (standardized ``x``) to get nats in the file's units:
        ``-Σ log scale`` over the ``x`` columns (the standardization's Jacobian)."""
        return -float(np.sum(np.log(self._require_stats()["x_scale"])))

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.predict_path is not None:
            self._predict = self._extract(self.predict_path, None, "predict")
            if self._stats is None and Path(self.path).expanduser().is_file():
                self._require_stats()  # replaced by the checkpoint's when one is loaded
            return
        self._load_splits()
        if self._stats is None:
            self._fit_stats()
        if stage == "predict":
            self._predict = self._splits["test"]

    def _dataset(self, arrays: tuple[np.ndarray, np.ndarray | None, np.ndarray]) -> TensorDataset:
        x, c = self.transform(arrays[0], arrays[1])
        return TensorDataset(x) if c is None else TensorDataset(x, c)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if split == "predict":
            if not hasattr(self, "_predict"):
                self.setup("predict")
            arrays = self._predict
        else:
            self._load_splits()
            arrays = self._splits[split]
        n = len(arrays[0])
        return DataLoader(self._dataset(arrays), batch_size=min(batch_size, n), shuffle=shuffle,
                          drop_last=shuffle and n > batch_size, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        self._record_in_run()
        return self._loader("train", self.batch_size, shuffle=True)

    def _record_in_run(self) -> None:
        """Add :meth:`summary` (file, columns, split method / seed / sizes, dropped rows) to
        the run's summary as ``data_file``, when training inside a cnf run directory."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.is_global_zero:
            return
        from cnf.rundir import RunDir

        run = RunDir(trainer.default_root_dir)
        if run.is_run:  # a `cnf fit` run (its config is saved before the first batch)
            self._load_splits()
            run.update_summary(data_file=self.summary())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The ``predict_path`` file (or the test split), in file order, never shuffled."""
        return self._loader("predict", self.eval_batch_size, shuffle=False)

    @property
    def predict_index(self) -> np.ndarray:
        """0-based file row of each predict example, in the predict loader's order."""
        if not hasattr(self, "_predict"):
            self.setup("predict")
        return np.asarray(self._predict[2], dtype=np.int64)

    def split_arrays(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Standardized ``(x, context)`` tensors of ``train`` / ``val`` / ``test``."""
        self._load_splits()
        return self.transform(*self._splits[split][:2])

    def _x_only(self, split: str) -> torch.Tensor | None:
        # plain x tensors for tools that score x alone (2-D density plots, `cnf evaluate
        # sample / exact`); a conditional model needs the context too: None
        return None if self.context_dim else self.split_arrays(split)[0]

    @property
    def train_set(self) -> torch.Tensor | None:
        """Standardized training ``x`` (unconditional files; ``None`` with context)."""
        return self._x_only("train")

    @property
    def val_set(self) -> torch.Tensor | None:
        return self._x_only("val")

    @property
    def test_set(self) -> torch.Tensor | None:
        return self._x_only("test")

    def summary(self) -> dict[str, Any]:
        """What was read and how: file, columns, split method / seed / sizes, rows dropped,
        standardization. For the run's summary."""
        out: dict[str, Any] = {"path": str(self.path), "columns": self.x_names,
                               "context_columns": self.context_names,
                               "standardize": self.standardize, "nan_policy": self.nan_policy}
        out.update(self._split_info)
        if self.val_path:
            out["val_path"] = str(self.val_path)
        if self.test_path:
            out["test_path"] = str(self.test_path)
        if self._dropped:
            out["dropped_rows"] = dict(self._dropped)
        if self._stats is not None:
            out["log_prob_offset"] = self.log_prob_offset
        return out
