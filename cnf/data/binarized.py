"""Binarized image datasets for VAEs: scikit-learn's 8×8 digits (offline, the default) and
MNIST from local files.

- ``digits``: the 1,797 8×8 digits shipped with scikit-learn (pixel values 0-16, scaled to
  [0, 1]). Static binarization thresholds at ``threshold``; dynamic binarization draws
  ``Bernoulli(pixel)`` afresh for every training batch (val/test: one fixed draw). Fixed
  splits: a permutation with seed 0, then 1,197 train / 300 val / 300 test.
- ``mnist``: if ``binarized_mnist_{train,valid,test}.amat`` (Larochelle & Murray's fixed
  static binarization, 50k/10k/10k, the protocol of the Sylvester and FFJORD VAE tables) are
  in ``root`` they are used for static binarization. Otherwise the IDX files
  ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte`` (optionally ``.gz``) are read:
  train = first 50k, val = last 10k of the training file, test = the 10k test images; static
  binarization is one Bernoulli draw with seed ``seed`` (fixed per seed), dynamic as above.
  Nothing is downloaded: a missing file raises :class:`cnf.errors.DataError` naming it.

Batches are 1-tuples ``(x,)`` with ``x`` of shape ``[B, H·W]`` in {0, 1} (float32).

Example::

    >>> dm = BinarizedDataModule("digits", batch_size=100)
    >>> dm.setup()
    >>> dm.train_set.shape
    torch.Size([1197, 64])
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from cnf.data.images import read_digits, read_idx, read_mnist
from cnf.errors import ConfigError, DataError

__all__ = ["BinarizedDataModule", "load_digits", "read_idx", "load_mnist"]  # read_idx: cnf.data.images

DIGITS_SPLITS = (1197, 300, 300)


def load_digits() -> torch.Tensor:
    """The 1,797 scikit-learn digits as grayscale in [0, 1], ``[1797, 64]``, in a fixed
    shuffled order (permutation seed 0)."""
    x = torch.from_numpy(read_digits().reshape(-1, 64).astype(np.float32) / 16.0)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm]


def load_mnist(root: str | Path, n_val: int = 10000) -> dict[str, torch.Tensor]:
    """MNIST grayscale in [0, 1] from IDX files in ``root``: ``{"train": [50000, 784],
    "val": [10000, 784], "test": [10000, 784]}`` (val = the last ``n_val`` training images)."""
    try:
        train_u8, test_u8 = read_mnist(root, folders=("",))
    except DataError as exc:
        raise DataError(f"{exc} For VAEs the static binarization "
                        f"binarized_mnist_{{train,valid,test}}.amat in that folder also works; "
                        f"offline alternative: data.init_args.name: digits") from None
    train = torch.from_numpy(train_u8.astype(np.float32) / 255).reshape(len(train_u8), -1)
    test = torch.from_numpy(test_u8.astype(np.float32) / 255).reshape(len(test_u8), -1)
    if train.shape[1] != 784 or test.shape[1] != 784 or len(train) <= n_val:
        raise DataError(f"unexpected MNIST images: train {list(train.shape)}, test "
                        f"{list(test.shape)} (expected 28x28 and more than {n_val} training images)")
    return {"train": train[:-n_val], "val": train[-n_val:], "test": test}


def _load_amat(root: Path) -> dict[str, torch.Tensor] | None:
    names = {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat",
             "test": "binarized_mnist_test.amat"}
    if not all((root / n).exists() for n in names.values()):
        return None
    return {s: torch.from_numpy(np.loadtxt(root / n, dtype=np.float32)) for s, n in names.items()}


class BinarizedDataModule(L.LightningDataModule):
    """Binarized images, flattened, for VAEs (see the module docstring).

    Args:
        name: ``"digits"`` (sklearn 8×8, offline) or ``"mnist"`` (local files in ``root``).
        root: folder with the MNIST files.
        binarization: ``"static"`` (fixed) or ``"dynamic"`` (training batches resampled).
        threshold: digits' static binarization threshold on the [0, 1] intensity.
        batch_size, eval_batch_size: loader batch sizes.
        seed: seed of MNIST's static Bernoulli draw and of the val/test draws under dynamic
            binarization.
        n_val: MNIST from IDX files: the last ``n_val`` training images form the validation set.
    """

    def __init__(self, name: Literal["digits", "mnist"] = "digits", root: str = "data/mnist",
                 binarization: Literal["static", "dynamic"] = "static", threshold: float = 0.5,
                 batch_size: int = 100, eval_batch_size: int = 1000, seed: int = 0,
                 n_val: int = 10000, num_workers: int = 0):
        super().__init__()
        if name not in ("digits", "mnist"):
            raise ConfigError(f"unknown binarized dataset {name!r}; use 'digits' or 'mnist'")
        if binarization not in ("static", "dynamic"):
            raise ConfigError(f"binarization must be 'static' or 'dynamic', got {binarization!r}")
        if not 0 < threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
        self.name, self.root, self.binarization = name, root, binarization
        self.threshold, self.seed, self.n_val = threshold, seed, n_val
        self.batch_size, self.eval_batch_size, self.num_workers = (
            batch_size, eval_batch_size, num_workers)
        self.image_shape = (8, 8) if name == "digits" else (28, 28)
        self.data_dim = self.image_shape[0] * self.image_shape[1]
        self.train_set: torch.Tensor | None = None
        self.val_set: torch.Tensor | None = None
        self.test_set: torch.Tensor | None = None
        self._train_gray: torch.Tensor | None = None

    def _gray_splits(self) -> dict[str, torch.Tensor]:
        if self.name == "digits":
            x = load_digits()
            a, b, _ = DIGITS_SPLITS
            return {"train": x[:a], "val": x[a:a + b], "test": x[a + b:]}
        return load_mnist(self.root, self.n_val)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.name == "mnist" and self.binarization == "static":
            amat = _load_amat(Path(self.root))
            if amat is not None:
                self.train_set, self.val_set, self.test_set = amat["train"], amat["val"], amat["test"]
                return
        gray = self._gray_splits()
        g = torch.Generator().manual_seed(self.seed)

        def static(x: torch.Tensor) -> torch.Tensor:
            if self.name == "digits":
                return (x > self.threshold).float()
            return torch.bernoulli(x, generator=g)

        def bernoulli(x: torch.Tensor) -> torch.Tensor:
            return torch.bernoulli(x, generator=g)

        fixed = static if self.binarization == "static" else bernoulli
        self.train_set = fixed(gray["train"])  # under dynamic: one draw, for shapes and plots
        if self.binarization == "dynamic":
            self._train_gray = gray["train"]
        self.val_set, self.test_set = fixed(gray["val"]), fixed(gray["test"])

    @staticmethod
    def _dynamic(batch: list[tuple[torch.Tensor]]) -> tuple[torch.Tensor]:
        x = torch.stack([b[0] for b in batch])
        return (torch.bernoulli(x),)

    def train_dataloader(self) -> DataLoader:
        dynamic = self.binarization == "dynamic"
        data = self._train_gray if dynamic else self.train_set
        return DataLoader(TensorDataset(data), batch_size=min(self.batch_size, len(data)),
                          shuffle=True, drop_last=len(data) > self.batch_size,
                          num_workers=self.num_workers,
                          collate_fn=self._dynamic if dynamic else None)

    def _eval(self, data: torch.Tensor) -> DataLoader:
        return DataLoader(TensorDataset(data), batch_size=min(self.eval_batch_size, len(data)),
                          shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
