"""cnf/data/binarized.py: digits splits and binarization, IDX reading, MNIST errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from cnf.data.binarized import BinarizedDataModule, load_digits, load_mnist, read_idx
from cnf.errors import ConfigError, DataError


def test_digits_static_splits_are_fixed_and_binary():
    a, b = BinarizedDataModule("digits"), BinarizedDataModule("digits", seed=5)
    a.setup(), b.setup()
    assert a.train_set.shape == (1197, 64) and a.val_set.shape == (300, 64)
    assert a.test_set.shape == (300, 64)
    for s in (a.train_set, a.val_set, a.test_set):
        assert set(s.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(a.train_set, b.train_set) and torch.equal(a.test_set, b.test_set)
    gray = load_digits()
    assert torch.equal(a.test_set, (gray[1497:] > 0.5).float())
    batch = next(iter(a.train_dataloader()))
    assert batch[0].shape == (100, 64)


def test_digits_dynamic_binarization_resamples_training_batches():
    dm = BinarizedDataModule("digits", binarization="dynamic")
    dm.setup()
    gray = dm._train_gray[:50]
    draws = torch.stack([dm._dynamic([(g,) for g in gray])[0] for _ in range(400)])
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(draws[0], draws[1])
    # 400 draws: the mean matches the intensities to within ~4 standard errors (≤ 0.1)
    assert (draws.mean(0) - gray).abs().max() < 0.1
    v1, v2 = BinarizedDataModule("digits", binarization="dynamic"), dm
    v1.setup()
    assert torch.equal(v1.val_set, v2.val_set)  # evaluation sets: one fixed draw per seed


def _write_idx(path, arr, gz):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_read_idx_plain_and_gzipped(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3-ubyte", arr, gz=False)
    _write_idx(tmp_path / "b-idx3-ubyte.gz", arr, gz=True)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "b-idx3-ubyte.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")


def test_mnist_from_idx_files(tmp_path):
    # a miniature MNIST (the real one: 60000 / 10000 images, n_val 10000 -> 50k/10k/10k)
    train = np.zeros((120, 28, 28), dtype=np.uint8)
    train[:, 0, 0] = 255
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train, gz=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", train[:30], gz=False)
    splits = load_mnist(tmp_path, n_val=20)
    assert {k: tuple(v.shape) for k, v in splits.items()} == {
        "train": (100, 784), "val": (20, 784), "test": (30, 784)}
    assert splits["train"][:, 0].min() == 1.0 and splits["train"][:, 1:].max() == 0.0
    with pytest.raises(DataError, match="more than 200"):
        load_mnist(tmp_path, n_val=200)
    dm = BinarizedDataModule("mnist", root=str(tmp_path), n_val=20)
    dm.setup()
    assert dm.train_set[:, 0].min() == 1 and dm.train_set[:, 1:].max() == 0


def test_missing_mnist_is_a_data_error(tmp_path):
    dm = BinarizedDataModule("mnist", root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        dm.setup()
    with pytest.raises(ConfigError):
        BinarizedDataModule("cifar")
