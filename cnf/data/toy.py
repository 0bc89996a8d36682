"""Toy 2D densities, with the generators and scales of FFJORD's ``toy_data.py``.

``sample(name, n, seed)`` draws ``n`` points as a float32 tensor ``[n, 2]``; the same seed
always gives the same points. ``ToyDataModule`` serves train / val / test sets drawn from
independent seeds.

The eight densities: ``8gaussians``, ``2spirals``, ``checkerboard``, ``rings``, ``moons``,
``circles``, ``pinwheel``, ``swissroll``. Their differential entropies set the best NLL any
model can reach; ``8gaussians`` has about 2.84 nats.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn import datasets as skd
from sklearn.utils import shuffle as sk_shuffle

from cnf.errors import ConfigError

__all__ = ["NAMES", "sample", "ToyDataModule"]


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    x = skd.make_swiss_roll(n_samples=n, noise=1.0, random_state=_rs(rng))[0]
    return x[:, [0, 2]] / 5.0


def _circles(n: int, rng: np.random.Generator) -> np.ndarray:
    return skd.make_circles(n_samples=n, factor=0.5, noise=0.08, random_state=_rs(rng))[0] * 3.0


def _rings(n: int, rng: np.random.Generator) -> np.ndarray:
    n4 = n3 = n2 = n // 4
    n1 = n - n4 - n3 - n2
    parts = []
    for count, radius in ((n4, 1.0), (n3, 0.75), (n2, 0.5), (n1, 0.25)):
        t = np.linspace(0, 2 * np.pi, count, endpoint=False)
        parts.append(np.stack([np.cos(t), np.sin(t)], 1) * radius)
    x = np.concatenate(parts) * 3.0
    x = sk_shuffle(x, random_state=_rs(rng))
    return x + rng.normal(scale=0.08, size=x.shape)


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    x = skd.make_moons(n_samples=n, noise=0.1, random_state=_rs(rng))[0]
    return x * 2 + np.array([-1.0, -0.2])


def _8gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    s = 1.0 / np.sqrt(2)
    centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    x = rng.standard_normal((n, 2)) * 0.5 + centers[rng.integers(0, 8, n)]
    return x / 1.414


def _pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    rads = np.linspace(0, 2 * np.pi, num_classes, endpoint=False)
    labels = rng.integers(0, num_classes, n)
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = rads[labels] + rate * np.exp(features[:, 0])
    rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], 1)
    return 2 * np.einsum("ti,tij->tj", features, rot.reshape(-1, 2, 2))


def _2spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    half = n // 2
    t = np.sqrt(rng.random((n - half, 1))) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(t) * t + rng.random((n - half, 1)) * 0.5
    d1y = np.sin(t) * t + rng.random((n - half, 1)) * 0.5
    x = np.vstack((np.hstack((d1x, d1y)), np.hstack((-d1x, -d1y))[:half])) / 3
    x = x + rng.standard_normal(x.shape) * 0.1
    return x[rng.permutation(n)]


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2_ = rng.random(n) - rng.integers(0, 2, n) * 2
    x2 = x2_ + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) * 2


def _rs(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


_GENERATORS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "8gaussians": _8gaussians,
    "2spirals": _2spirals,
    "checkerboard": _checkerboard,
    "rings": _rings,
    "moons": _moons,
    "circles": _circles,
    "pinwheel": _pinwheel,
    "swissroll": _swissroll,
}
NAMES: tuple[str, ...] = tuple(_GENERATORS)


def sample(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points of the toy density ``name`` as float32 ``[n, 2]``; deterministic in ``seed``.

    Example::

        >>> sample("8gaussians", 1000, seed=0).shape
        torch.Size([1000, 2])
    """
    if name not in _GENERATORS:
        raise ConfigError(f"unknown toy dataset {name!r}; choose one of: {', '.join(NAMES)}")
    if n <= 0:
        raise ConfigError(f"number of samples must be positive, got {n}")
    x = _GENERATORS[name](n, np.random.default_rng(seed))
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


from cnf.data.datamodule import TensorDataModule  # noqa: E402  (after sample(), no cycle)


class ToyDataModule(TensorDataModule):
    """Train / val / test sets of a toy 2D density, drawn from independent seeds
    (``seed``, ``seed + 1``, ``seed + 2``).

    Args:
        name: one of :data:`NAMES`.
        n_train, n_val, n_test: set sizes.
        batch_size: training batch size (evaluation uses ``eval_batch_size``).
        seed: base seed of the three sets.
        resample_every_epoch: draw a fresh training set each epoch (as FFJORD's toy script
            draws fresh batches), from seeds that never meet the val/test seeds.
    """

    def __init__(
        self,
        name: str = "8gaussians",
        n_train: int = 50_000,
        n_val: int = 5_000,
        n_test: int = 20_000,
        batch_size: int = 512,
        eval_batch_size: int = 5_000,
        seed: int = 0,
        resample_every_epoch: bool = False,
        num_workers: int = 0,
    ):
        if name not in _GENERATORS:
            raise ConfigError(f"unknown toy dataset {name!r}; choose one of: {', '.join(NAMES)}")
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers)
        self.name = name
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.seed = seed
        self.resample_every_epoch = resample_every_epoch
        self.event_shape = (2,)

    def make_split(self, split: str, epoch: int = 0) -> torch.Tensor:
        if split == "train":
            seed = self.seed if not self.resample_every_epoch or epoch == 0 else (
                10_007 * (self.seed + 1) + 3 * epoch)
            return sample(self.name, self.n_train, seed)
        offset = {"val": 1, "test": 2}[split]
        return sample(self.name, self.n_val if split == "val" else self.n_test, self.seed + offset)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.resample_every_epoch and self.trainer is not None:
            # Lightning asks for the train loader once unless told to reload it every epoch
            self.trainer.reload_dataloaders_every_n_epochs = 1

    def train_dataloader(self):
        if self.resample_every_epoch and self.trainer is not None:
            self.train_set = self.make_split("train", self.trainer.current_epoch)
        return super().train_dataloader()
