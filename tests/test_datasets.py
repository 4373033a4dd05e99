"""IDX reader on files the test writes itself, the Fashion-MNIST loader's paths and errors, and the
real Debian-packaged files when they are installed."""
import gzip
import os

import numpy as np
import pytest

from pmm_gpu import datasets


def write_idx(path, a: np.ndarray, code: int, compress=True):
    header = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    body = a.astype(a.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(header + body)


@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D),
                                        (np.float64, 0x0E)])
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, dtype, code, compress):
    a = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 7 % 251).astype(dtype)
    p = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(p, a, code, compress)
    b = datasets.read_idx(p)
    assert b.dtype == dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)


def test_read_idx_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(p)
    write_idx(p, np.zeros((4, 2), np.uint8), 0x08)
    with gzip.open(p, "rb") as f:
        data = f.read()
    with gzip.open(p, "wb") as f:
        f.write(data[:-1])  # one byte short
    with pytest.raises(ValueError, match="file holds 7"):
        datasets.read_idx(p)


def fake_fashion(d, n=5):
    rng = np.random.default_rng(0)
    for split, (img, lab) in datasets.FASHION_MNIST_FILES.items():
        write_idx(os.path.join(d, img), rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), 0x08)
        write_idx(os.path.join(d, lab), rng.integers(0, 10, n).astype(np.uint8), 0x08)


def test_loader_path_argument_and_env(tmp_path, monkeypatch):
    fake_fashion(tmp_path)
    X, y = datasets.load_fashion_mnist("train", path=tmp_path)
    assert X.shape == (5, 28, 28) and X.dtype == np.uint8 and y.shape == (5,)
    monkeypatch.setenv(datasets.FASHION_MNIST_ENV, str(tmp_path))
    X2, _ = datasets.load_fashion_mnist("test", flatten=True)
    assert X2.shape == (5, 784)
    with pytest.raises(ValueError, match="split"):
        datasets.load_fashion_mnist("val", path=tmp_path)


def test_missing_files_name_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist("train", path=tmp_path)


@pytest.mark.skipif(not os.path.isfile(os.path.join(datasets.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    Xtr, ytr = datasets.load_fashion_mnist("train", path=datasets.FASHION_MNIST_DIR)
    Xte, yte = datasets.load_fashion_mnist("test", path=datasets.FASHION_MNIST_DIR)
    assert Xtr.shape == (60000, 28, 28) and Xte.shape == (10000, 28, 28)
    assert np.array_equal(np.bincount(ytr), np.full(10, 6000)) and np.array_equal(np.bincount(yte), np.full(10, 1000))
    assert Xtr.dtype == np.uint8 and Xtr.max() == 255
