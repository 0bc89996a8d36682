"""Image datasets as integer pixel levels: scikit-learn's digits (offline), MNIST (IDX files)
and CIFAR-10 (python pickled batches) from local files.

Every loader returns ``(train, val, test)`` uint8 tensors ``[N, C, H, W]`` holding the levels
``0 .. levels-1`` (17 for digits, 256 for MNIST and CIFAR-10). Dequantization, scaling and the
logit transform happen in the model (:mod:`cnf.dequantization`), so that bits/dim are
always computed on the data's own discrete levels.

=========  ==========  ======  ================================================================
name       shape       levels  files under the data directory
=========  ==========  ======  ================================================================
digits     1 × 8 × 8   17      none (bundled with scikit-learn); seeded split 72 / 8 / 20 %
mnist      1 × 28 × 28 256     ``mnist/{train,t10k}-images-idx3-ubyte[.gz]``; val = the last
                               10,000 training images (the 50k / 10k / 10k split of MAF)
cifar10    3 × 32 × 32 256     ``cifar10/data_batch_{1..5}``, ``cifar10/test_batch`` (also
                               found under ``cifar-10-batches-py/``); val = the last 10 % of the
                               training batches (MAF's split)
=========  ==========  ======  ================================================================

The data directory is ``root``, else ``$CNF_DATA_DIR``, else ``./data``; a missing file raises
:class:`cnf.errors.DataError` naming the file, the path where it was expected and where to get it.

Example::

    >>> train, val, test = load("digits")
    >>> train.shape, train.max()
    (torch.Size([1295, 1, 8, 8]), tensor(16, dtype=torch.uint8))
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from cnf.data.datamodule import TensorDataModule
from cnf.data.tabular import data_root
from cnf.errors import ConfigError, DataError

__all__ = ["LEVELS", "SHAPES", "NAMES", "read_idx", "read_digits", "read_mnist", "load_digits",
           "load_mnist",
           "load_cifar10", "load", "ImageDataModule", "pixel_histogram_bpd"]

LEVELS: dict[str, int] = {"digits": 17, "mnist": 256, "cifar10": 256}
SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
NAMES: tuple[str, ...] = tuple(LEVELS)
MNIST_URL = ("http://yann.lecun.com/exdb/mnist/ (or any mirror): train-images-idx3-ubyte.gz and "
             "t10k-images-idx3-ubyte.gz")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _missing(name: str, rel: str, expected: Path, source: str, root: Path) -> DataError:
    return DataError(
        f"{name}: missing file {rel!r}, expected at {expected.resolve()}. Download it from "
        f"{source}, put it under the data directory, and point cnf at that directory with the "
        f"data module's `root` option or the CNF_DATA_DIR environment variable "
        f"(now: {root.resolve()})."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not: magic ``00 00 <type> <ndim>``,
    ``ndim`` big-endian int32 sizes, then the data. The one IDX reader of cnf (the binarized
    VAE data reads through it too)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims))
    offset = 4 + 4 * ndim
    if len(raw) - offset < count * dtype.itemsize:
        raise DataError(f"{path}: the header announces {dims} but the file is truncated")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims).copy()


def read_digits() -> np.ndarray:
    """scikit-learn's 8×8 digits as integer levels 0..16, uint8 ``[1797, 1, 8, 8]``, in
    scikit-learn's order: the one digits reader (images split it, binarized scales it)."""
    from sklearn.datasets import load_digits as _load

    return _load().images.astype(np.uint8)[:, None]


def read_mnist(root: str | os.PathLike | None = None,
               folders: tuple[str, ...] = ("mnist", "MNIST/raw")) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's training and test images from their IDX files (optionally ``.gz``) in the
    first of ``root/<folder>`` that has them: uint8 ``[60000, 28, 28]`` and ``[10000, 28, 28]``.
    The one MNIST reader (images and binarized data split it their own way)."""
    r = data_root(root)
    train = read_idx(_find(r, "mnist", folders, "train-images-idx3-ubyte", True, MNIST_URL))
    test = read_idx(_find(r, "mnist", folders, "t10k-images-idx3-ubyte", True, MNIST_URL))
    for arr, fname in ((train, "train-images"), (test, "t10k-images")):
        if arr.ndim != 3 or arr.dtype != np.uint8:
            raise DataError(f"mnist {fname}: expected uint8 images [N, H, W], got "
                            f"{arr.dtype} {arr.shape}")
    return train, test


def _split(data: np.ndarray, seed: int, test_frac: float = 0.2, val_frac: float = 0.1) -> Splits:
    data = data[np.random.RandomState(seed).permutation(len(data))]
    n_test = int(test_frac * len(data))
    rest, test = data[:-n_test], data[-n_test:]
    n_val = int(val_frac * len(rest))
    return tuple(torch.from_numpy(np.ascontiguousarray(a))  # type: ignore[return-value]
                 for a in (rest[:-n_val], rest[-n_val:], test))


def load_digits(seed: int = 0) -> Splits:
    """scikit-learn's 8×8 digits (1,797 images, levels 0..16): seeded split 72 / 8 / 20 %."""
    return _split(read_digits(), seed)


def _find(root: Path, name: str, folders: tuple[str, ...], filename: str,
          gz_ok: bool, source: str) -> Path:
    for folder in folders:
        for cand in ([filename, filename + ".gz"] if gz_ok else [filename]):
            if (root / folder / cand).is_file():
                return root / folder / cand
    rel = f"{folders[0]}/{filename}" + ("[.gz]" if gz_ok else "")
    raise _missing(name, rel, root / folders[0] / filename, source, root)


def load_mnist(root: str | os.PathLike | None = None, n_val: int = 10_000) -> Splits:
    """MNIST from its IDX files: train = the first ``60000 - n_val`` training images, val = the
    last ``n_val``, test = the 10,000 test images; uint8 ``[N, 1, 28, 28]``."""
    train, test = read_mnist(root)
    if not 0 < n_val < len(train):
        raise ConfigError(f"n_val must be in (0, {len(train)}), got {n_val}")
    out = (train[:-n_val], train[-n_val:], test)
    return tuple(torch.from_numpy(np.ascontiguousarray(a[:, None])) for a in out)  # type: ignore[return-value]


def _cifar_batch(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    data = batch.get("data", batch.get(b"data")) if isinstance(batch, dict) else None
    if data is None:
        raise DataError(f"{path} is not a CIFAR-10 python batch (no 'data' entry)")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: expected 'data' of shape [N, 3072], got {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(root: str | os.PathLike | None = None, val_frac: float = 0.1) -> Splits:
    """CIFAR-10 from the python batches: train / val = the training batches split
    ``1 - val_frac`` / ``val_frac`` in order (MAF's split), test = ``test_batch``; uint8
    ``[N, 3, 32, 32]``."""
    r = data_root(root)
    folders = ("cifar10", "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)]
    train = np.concatenate([_cifar_batch(_find(r, "cifar10", folders, n, False, CIFAR_URL))
                            for n in names])
    test = _cifar_batch(_find(r, "cifar10", folders, "test_batch", False, CIFAR_URL))
    split = int((1 - val_frac) * len(train))
    out = (train[:split], train[split:], test)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in out)  # type: ignore[return-value]


def load(name: str, root: str | os.PathLike | None = None, seed: int = 0,
         n_val: int | None = None) -> Splits:
    """``(train, val, test)`` uint8 tensors ``[N, C, H, W]`` of the image set ``name``."""
    if name == "digits":
        return load_digits(seed)
    if name == "mnist":
        return load_mnist(root, n_val if n_val is not None else 10_000)
    if name == "cifar10":
        return load_cifar10(root, 0.1 if n_val is None else n_val / 50_000)
    raise ConfigError(f"unknown image dataset {name!r}; choose one of: {', '.join(NAMES)}")


def pixel_histogram_bpd(train: torch.Tensor, levels: int, data: torch.Tensor | None = None,
                        alpha: float = 0.0) -> float:
    """Bits/dim of the independent-pixel baseline: each pixel gets its own histogram over the
    ``levels`` values, estimated on ``train`` with ``alpha`` pseudo-counts per level. Under
    uniform dequantization its density is constant on every bin, so the dequantized bits/dim
    equal the discrete ones exactly.

    With ``data=None`` and ``alpha=0`` this is the per-pixel histogram entropy of the training
    set (the baseline's best case, on its own training data); pass held-out ``data`` (and
    ``alpha > 0`` so unseen values have non-zero probability) for its held-out cross-entropy.
    """
    tr = train.reshape(len(train), -1).long()
    d = tr.shape[1]
    counts = torch.zeros(d, levels, dtype=torch.float64)
    counts.scatter_add_(1, tr.t().contiguous(), torch.ones(d, len(tr), dtype=torch.float64))
    probs = (counts + alpha) / (len(tr) + alpha * levels)
    ev = tr if data is None else data.reshape(len(data), -1).long()
    logp = torch.log2(probs.gather(1, ev.t().contiguous()))  # [D, N]
    if torch.isinf(logp).any():
        raise ConfigError("a held-out pixel value never occurs in the training set at that "
                          "position: use alpha > 0 (e.g. 1, Laplace smoothing)")
    return float(-logp.sum(0).mean() / d)


class ImageDataModule(TensorDataModule):
    """Integer-level images (uint8 ``[B, C, H, W]``); ``levels`` is the number of grey levels
    the model's dequantization must use (17 for digits, 256 for MNIST / CIFAR-10).

    Args:
        name: ``digits`` (offline), ``mnist`` or ``cifar10`` (local files).
        root: data directory (default ``$CNF_DATA_DIR`` or ``./data``).
        batch_size, eval_batch_size: training and evaluation batch sizes.
        seed: split seed (digits only; MNIST / CIFAR-10 splits are fixed).
        n_val: validation images (MNIST default 10,000, CIFAR-10 default 5,000).
        max_train: keep only the first that many training images (quick runs).
    """

    def __init__(
        self,
        name: str = "digits",
        root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1_000,
        seed: int = 0,
        n_val: int | None = None,
        max_train: int | None = None,
        num_workers: int = 0,
    ):
        if name not in NAMES:
            raise ConfigError(f"unknown image dataset {name!r}; choose one of: {', '.join(NAMES)}")
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers)
        self.name, self.root, self.seed = name, root, seed
        self.n_val, self.max_train = n_val, max_train
        self.levels = LEVELS[name]
        self.event_shape = SHAPES[name]
        self._splits: dict[str, torch.Tensor] | None = None

    def _load(self) -> dict[str, torch.Tensor]:
        if self._splits is None:
            train, val, test = load(self.name, self.root, self.seed, self.n_val)
            if self.max_train is not None:
                train = train[: self.max_train]
            self._splits = {"train": train, "val": val, "test": test}
        return self._splits

    def make_split(self, split: str) -> torch.Tensor:
        return self._load()[split]
