"""Model files (.npz, written atomically) and user data files (CSV, NPZ)."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "pmm_gpu-model"
FORMAT_VERSION = 1


def atomic_write(path, write):
    """Call write(fileobj) on a temporary file beside ``path``, then rename it over ``path``."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_model_file(path, class_name: str, config: dict, arrays: dict[str, np.ndarray]):
    """Write a model file: the format marker, the class name, the JSON config and ``arrays``, atomically."""
    header = {"format": np.array(FORMAT), "format_version": np.array(FORMAT_VERSION),
              "class": np.array(class_name), "config": np.array(json.dumps(config))}
    atomic_write(path, lambda f: np.savez(f, **header, **arrays))


def read_model_file(path, classes) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(class name, config, arrays) of a model file written by ``write_model_file``; the class must be
    one of ``classes``. FileNotFoundError for a missing file, ValueError naming the file for anything
    that is not a complete pmm_gpu model file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path!r} is not a readable .npz file ({type(e).__name__}: {e})") from None
    if data.get("format") is None or str(data["format"]) != FORMAT:
        raise ValueError(f"{path!r} is not a pmm_gpu model file (no '{FORMAT}' marker)")
    if int(data["format_version"]) > FORMAT_VERSION:
        raise ValueError(f"{path!r} has format version {int(data['format_version'])}; this pmm_gpu reads <= {FORMAT_VERSION}")
    cls_name = str(data["class"])
    if cls_name not in classes:
        raise ValueError(f"{path!r} holds an unknown model class {cls_name!r}")
    config = json.loads(str(data["config"]))
    arrays = {k: v for k, v in data.items() if k not in ("format", "format_version", "class", "config")}
    return cls_name, config, arrays


def read_data(path, n_targets: int = 1):
    """Read (X, Y) from a CSV (optional header line; features then the last ``n_targets`` columns are
    targets) or an NPZ with arrays X and Y. Errors are one-line ValueErrors naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                if "X" not in z.files:
                    raise ValueError(f"{path!r} must contain an array 'X' (found {z.files})")
                return z["X"], (z["Y"] if "Y" in z.files else None)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ValueError(f"{path!r} is not a readable .npz file ({type(e).__name__})") from None
    table = _read_csv(path)
    if n_targets < 0 or table.shape[1] <= n_targets:
        raise ValueError(f"{path!r} has {table.shape[1]} columns; need at least one feature plus {n_targets} target column(s)")
    return table[:, :table.shape[1] - n_targets], (table[:, -n_targets:] if n_targets else None)


def _read_csv(path) -> np.ndarray:
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    if not lines:
        raise ValueError(f"{path!r} is empty")
    rows = []
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.split(",")]
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            if i == 0:  # a header line
                continue
            raise ValueError(f"{path!r} line {i + 1}: non-numeric value in {line[:60]!r}") from None
        if len(rows[-1]) != len(rows[0]):
            raise ValueError(f"{path!r} line {i + 1}: {len(rows[-1])} columns, expected {len(rows[0])}")
    if not rows:
        raise ValueError(f"{path!r} has a header but no data rows")
    return np.array(rows)
