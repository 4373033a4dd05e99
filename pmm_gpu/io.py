"""Model files (.npz, written atomically) and user data files (CSV, NPZ).

A leaf: imports nothing of pmm_gpu. Every bad file gives one ValueError naming the file and what is wrong;
reading never allocates more than the file's arrays declare, and those are checked against its size first.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import socket
import struct
import time
import zipfile
import zlib

import numpy as np

FORMAT = "pmm_gpu-model"
FORMAT_VERSION = 1
HEADER_KEYS = ("format", "format_version", "class", "config")
# An .npz may declare at most this many bytes of arrays beyond ZIP_RATIO times its own size (a zip bomb
# of zeros is refused before it is inflated; pmm_gpu writes uncompressed archives, ratio ≈ 1).
ZIP_SLACK, ZIP_RATIO = 64 * 2**20, 20

# Temporary files of atomic_write: ".pmm-<host>-<pid>-<random>.tmp" beside the target (short, so any
# target name the file system allows works). A later successful write in the same directory removes
# those whose process is dead (same host) or that are older than STALE_TEMP_S (any host).
_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"
_TEMP_RE = re.compile(r"\.pmm-([0-9a-f]{4})-(\d+)-[0-9a-f]{8}\.tmp\Z")
STALE_TEMP_S = 3600


def atomic_write(path, write):
    """Call write(fileobj) on a temporary file beside ``path``, then rename it over ``path``.

    A reader sees the old or the new complete file, never a partial one, even after kill -9 or a power
    loss (the data and then the directory entry are fsynced). The new file keeps the mode of the file
    it replaces, else gets a normal file's mode (0666 & ~umask). Stale temporary files of earlier,
    killed writers are removed after the rename.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = None
    tmp = os.path.join(d, f".pmm-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(d)
    remove_stale_temps(d)


def _fsync_dir(d: str):
    """Make a rename in directory ``d`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(d: str) -> int:
    """Remove atomic_write's temporary files in ``d`` left by dead writers; returns how many.

    Same host: the writer's pid is gone (kill -9), or the file is older than STALE_TEMP_S (pid reuse);
    another host (a shared file system): older than STALE_TEMP_S. A live writer's file is never touched.
    """
    removed, now = 0, time.time()
    try:
        entries = list(os.scandir(d))
    except OSError:
        return 0
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if not m:
            continue
        try:
            old = now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S
        except OSError:
            continue
        if old or (m[1] == _HOST and not _pid_alive(int(m[2]))):
            removed += _unlink_quietly(e.path)
    return removed


def _pid_alive(pid: int) -> bool:
    if os.name == "nt" or pid <= 0:  # no signal-0 probe on Windows: rely on the age rule
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # EPERM: alive under another user
    return True


def _unlink_quietly(p) -> int:
    try:
        os.unlink(p)
        return 1
    except OSError:
        return 0


def _json_default(obj):
    """JSON for the NumPy values a config may hold: np.int64(0) -> 0, np.float32 or np.dtype -> "float32"."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.dtype) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        return np.dtype(obj).name
    raise TypeError(f"{type(obj).__name__} {obj!r} cannot be saved in a model file's JSON config")


def to_json(obj) -> str:
    """json.dumps that also takes NumPy scalars, arrays and dtypes (e.g. seed=np.int64(0))."""
    return json.dumps(obj, default=_json_default)


def write_model_file(path, class_name: str, config: dict, arrays: dict[str, np.ndarray]):
    """Write a model file: the format marker, the class name, the JSON config and ``arrays``, atomically."""
    header = {"format": np.array(FORMAT), "format_version": np.array(FORMAT_VERSION),
              "class": np.array(class_name), "config": np.array(to_json(config))}
    atomic_write(path, lambda f: np.savez(f, **header, **arrays))


def read_npz(path, what: str = "file") -> dict[str, np.ndarray]:
    """All arrays of an .npz, after checking each member's declared size against the archive (no
    object arrays, no member claiming more bytes than it holds, no zip bomb). ValueError naming the file."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            declared = sum(i.file_size for i in infos)
            if declared > ZIP_SLACK + ZIP_RATIO * os.path.getsize(path):
                raise ValueError(f"declares {declared} bytes of arrays in a file of {os.path.getsize(path)} bytes")
            for info in infos:
                _check_member(zf, info)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, struct.error, OSError, ValueError, EOFError, KeyError,
            NotImplementedError, RuntimeError) as e:  # RuntimeError: an encrypted member
        raise ValueError(f"{what} {path!r} is not a readable .npz file ({type(e).__name__}: {e})") from None


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    """An .npy member's header must describe a non-object array that fits in the member's bytes."""
    if not info.filename.endswith(".npy"):
        raise ValueError(f"member {info.filename!r} is not an .npy array")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"member {info.filename!r} has unsupported .npy version {version}")
        shape, _, dtype = read(f)
    if dtype.hasobject:
        raise ValueError(f"member {info.filename!r} holds Python objects (refused: no pickles)")
    if int(np.prod(shape, dtype=object)) * dtype.itemsize > info.file_size:
        raise ValueError(f"member {info.filename!r} claims shape {shape} of {dtype} but holds {info.file_size} bytes")


def read_model_file(path, classes) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(class name, config, arrays) of a model file written by ``write_model_file``; the class must be
    one of ``classes``. FileNotFoundError for a missing file; ValueError naming the file for anything
    that is not a complete pmm_gpu model file: no marker, a missing key, an unknown class, a config that
    is not a JSON object, parameters that are not finite reals, an optimizer state that does not fit."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    data = read_npz(path, "model file")

    def bad(msg):
        return ValueError(f"model file {path!r} {msg}")

    if _text(data.get("format")) != FORMAT:
        raise bad(f"is not a pmm_gpu model file (no '{FORMAT}' marker)")
    missing = [k for k in (*HEADER_KEYS, "params") if k not in data]
    if missing:
        raise bad(f"is incomplete: it has no {', '.join(missing)}")
    version = data["format_version"]
    if version.shape != () or version.dtype.kind not in "iu":
        raise bad(f"has a malformed format_version (expected an integer, got {version.dtype} {version.shape})")
    if int(version) > FORMAT_VERSION:
        raise bad(f"has format version {int(version)}; this pmm_gpu reads <= {FORMAT_VERSION}")
    cls_name = _text(data["class"])
    if cls_name not in classes:
        raise bad(f"holds an unknown model class {cls_name!r} (known: {sorted(classes)})")
    try:
        config = json.loads(_text(data["config"]) or "")
    except (ValueError, RecursionError) as e:
        raise bad(f"has a config that is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise bad(f"has a config that is not a JSON object (got {type(config).__name__})")
    arrays = {k: v for k, v in data.items() if k not in HEADER_KEYS}
    _check_state_arrays(arrays, bad)
    return cls_name, config, arrays


def _text(a) -> str | None:
    """The string in a 0-d text array, else None."""
    return str(a) if isinstance(a, np.ndarray) and a.shape == () and a.dtype.kind == "U" else None


def _check_state_arrays(arrays: dict, bad):
    """params: a 1-D finite real buffer; adam_m, adam_v, adam_step: all or none, moments shaped like params."""
    params = arrays["params"]
    if params.ndim != 1 or params.dtype.kind != "f":
        raise bad(f"has a malformed parameter buffer (expected a 1-D float array, got {params.dtype} {params.shape})")
    adam = [k for k in ("adam_m", "adam_v", "adam_step") if k in arrays]
    if adam and len(adam) != 3:
        raise bad(f"has an incomplete optimizer state ({adam}; expected adam_m, adam_v and adam_step)")
    for k in ("params", "adam_m", "adam_v") if adam else ("params",):
        a = arrays[k]
        if a.shape != params.shape or a.dtype.kind != "f":
            raise bad(f"has {k} of {a.dtype} {a.shape}; expected a float array of the parameters' shape {params.shape}")
        if not np.all(np.isfinite(a)):
            raise bad(f"has {int(a.size - np.count_nonzero(np.isfinite(a)))} NaN/inf value(s) in {k}")
    if adam and (arrays["adam_step"].shape != () or arrays["adam_step"].dtype.kind not in "iu"
                 or int(arrays["adam_step"]) < 0):
        raise bad(f"has a malformed adam_step (expected an integer >= 0, got {arrays['adam_step']!r})")


def read_data(path, n_targets: int = 1):
    """Read (X, Y) from a CSV (optional header line; features then the last ``n_targets`` columns are
    targets) or an NPZ with arrays X and Y (Y optional, as many rows as X). Errors are one-line
    ValueErrors naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if path.endswith(".npz"):
        return _read_data_npz(path)
    table = _read_csv(path)
    if n_targets < 0 or table.shape[1] <= n_targets:
        raise ValueError(f"{path!r} has {table.shape[1]} columns; need at least one feature plus {n_targets} target column(s)")
    return table[:, :table.shape[1] - n_targets], (table[:, -n_targets:] if n_targets else None)


def _read_data_npz(path):
    z = read_npz(path, "data file")
    if "X" not in z:
        raise ValueError(f"{path!r} must contain an array 'X' (found {sorted(z)})")
    X, Y = z["X"], z.get("Y")
    for name, a in (("X", X), ("Y", Y)):
        if a is not None and (a.ndim not in (1, 2) or a.dtype.kind not in "biuf"):
            raise ValueError(f"{path!r}: {name} must be a 1-D or 2-D array of real numbers, got {a.dtype} {a.shape}")
    if Y is not None and len(Y) != len(X):
        raise ValueError(f"{path!r}: X has {len(X)} rows but Y has {len(Y)}; they must pair up row by row")
    return X, Y


def _read_csv(path) -> np.ndarray:
    """Rows of numbers; the first line is a header only when none of its cells is a number (a first row
    mixing numbers and text is a typo, reported, never silently dropped). A UTF-8 BOM is ignored."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = [(i + 1, ln.strip()) for i, ln in enumerate(f) if ln.strip()]
    if not lines:
        raise ValueError(f"{path!r} is empty")
    rows, header = [], None
    for k, (lineno, line) in enumerate(lines):
        cells = [c.strip() for c in line.split(",")]
        values = [_number(c) for c in cells]
        if None in values:
            if k == 0 and all(v is None for v in values):
                header = cells
                continue
            bad = next(c for c, v in zip(cells, values) if v is None)
            raise ValueError(f"{path!r} line {lineno}: non-numeric value {bad[:30]!r} in {line[:60]!r}")
        rows.append(values)
        if len(values) != len(rows[0]):
            raise ValueError(f"{path!r} line {lineno}: {len(values)} columns, expected {len(rows[0])}")
    if not rows:
        raise ValueError(f"{path!r} has a header but no data rows")
    if header is not None and len(header) != len(rows[0]):
        raise ValueError(f"{path!r}: the header has {len(header)} columns but the data rows have {len(rows[0])}")
    return np.array(rows)


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None
