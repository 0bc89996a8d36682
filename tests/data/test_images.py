"""Image loaders on fixture files written in the real formats (IDX, CIFAR python batches)."""

import gzip
import pickle

import numpy as np
import pytest
import torch

from cnf.data.images import ImageDataModule, load, pixel_histogram_bpd, read_idx
from cnf.errors import ConfigError, DataError


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    (tmp_path / "mnist").mkdir()
    _write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", train, gz)
    _write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", test, gz)
    tr, va, te = load("mnist", root=tmp_path, n_val=5)
    assert tr.shape == (25, 1, 28, 28) and va.shape == (5, 1, 28, 28) and te.shape == (7, 1, 28, 28)
    assert tr.dtype == torch.uint8
    np.testing.assert_array_equal(va[:, 0].numpy(), train[25:])
    np.testing.assert_array_equal(te[:, 0].numpy(), test)


def test_idx_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + b"\0" * 10)
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_cifar10_from_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batches.append(data)
        with open(folder / name, "wb") as f:  # the official files pickle byte-string keys
            pickle.dump({b"data": data, b"labels": [0, 1, 2, 3]}, f)
    tr, va, te = load("cifar10", root=tmp_path)
    assert tr.shape == (18, 3, 32, 32) and va.shape == (2, 3, 32, 32) and te.shape == (4, 3, 32, 32)
    # rows are R (1024), G, B planes of a 32x32 image
    np.testing.assert_array_equal(tr[0, 1].numpy().ravel(), batches[0][0, 1024:2048])
    np.testing.assert_array_equal(te.numpy().reshape(4, -1), batches[-1])


@pytest.mark.parametrize("name,rel,source", [
    ("mnist", "mnist/train-images-idx3-ubyte", "yann.lecun.com"),
    ("cifar10", "cifar10/data_batch_1", "cifar-10-python.tar.gz"),
])
def test_missing_image_files(tmp_path, monkeypatch, name, rel, source):
    monkeypatch.setenv("CNF_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        load(name)
    msg = str(info.value)
    assert rel in msg and str((tmp_path / rel).resolve()) in msg and source in msg


def test_digits_datamodule():
    dm = ImageDataModule("digits", batch_size=32)
    assert dm.levels == 17 and dm.event_shape == (1, 8, 8)
    dm.setup("fit")
    (x,) = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.uint8 and int(x.max()) <= 16
    assert len(dm.train_set) + len(dm.val_set) + len(load("digits")[2]) == 1797
    with pytest.raises(ConfigError):
        ImageDataModule("svhn")


def test_pixel_histogram_baseline_hand_computed():
    # pixel 1 takes 0, 0, 1, 1 (entropy 1 bit); pixel 2 is always 3 (0 bits): 0.5 bits/dim
    train = torch.tensor([[0, 3], [0, 3], [1, 3], [1, 3]])
    assert pixel_histogram_bpd(train, 4) == pytest.approx(0.5)
    # held out (1, 2) with alpha = 1: p1 = (2+1)/(4+4), p2 = (0+1)/8 -> -(log2 3/8 + log2 1/8)/2
    held = torch.tensor([[1, 2]])
    expected = -(np.log2(3 / 8) + np.log2(1 / 8)) / 2
    assert pixel_histogram_bpd(train, 4, held, alpha=1) == pytest.approx(expected)
    with pytest.raises(ConfigError):
        pixel_histogram_bpd(train, 4, held)
