"""Reference data sets that ship with the machine (docs/DESIGN.md §6).

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``, which installs the original
IDX files, gzip-compressed, under /usr/share/datasets/fashion-mnist:

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  (60,000 images)
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz   (10,000 images, the official test set)

IDX format: a big-endian header — two zero bytes, a type code (0x08 = uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions d — then d big-endian uint32
sizes, then the data in C order.
"""
from __future__ import annotations

import gzip
import os

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "PMM_GPU_FASHION_MNIST"  # overrides the directory
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed when the name ends in .gz) into a NumPy array.

    Raises ValueError naming the file for a bad magic number, an unknown type code or a size mismatch.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path!r} is not an IDX file (bad magic number {data[:4].hex()!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path!r}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{path!r}: IDX header says shape {shape} ({count * dtype.itemsize} bytes of data), "
                         f"file holds {len(data) - header}")
    return np.frombuffer(data, dtype, count=count, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def fashion_mnist_dir(path=None) -> str:
    """The directory to read: ``path``, else $PMM_GPU_FASHION_MNIST, else /usr/share/datasets/fashion-mnist."""
    return os.fspath(path) if path is not None else os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR


def load_fashion_mnist(split: str = "train", path=None, flatten: bool = False):
    """Fashion-MNIST images and labels: X uint8 (N, 28, 28) (or (N, 784) when flatten), y uint8 (N,).

    split: "train" (60,000) or "test" (the official 10,000). path: directory of the IDX .gz files
    (default: see ``fashion_mnist_dir``). A missing file raises FileNotFoundError naming the Debian
    package that provides them.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = fashion_mnist_dir(path)
    files = [os.path.join(d, name) for name in FASHION_MNIST_FILES[split]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST file(s) not found: {', '.join(missing)}. Install the Debian package "
            f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), or point the path argument "
            f"or ${FASHION_MNIST_ENV} at a directory holding {' and '.join(FASHION_MNIST_FILES[split])}.")
    X, y = read_idx(files[0]), read_idx(files[1])
    if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{d!r}: images {X.shape} and labels {y.shape} do not form an image set")
    return (X.reshape(len(X), -1) if flatten else X), y
