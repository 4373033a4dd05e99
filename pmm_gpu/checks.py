"""Input validation: every public entry point turns bad input into one clear ValueError/TypeError
naming the argument, what was expected and what arrived — never a crash deep inside NumPy or CUDA."""
from __future__ import annotations

import numpy as np


def choice(name: str, value, options):
    """``value`` must be one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}")
    return value


def positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def finite_float(name: str, value, minimum: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}") from None
    if not np.isfinite(v) or (minimum is not None and v < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return v


def numeric_array(name: str, a, ndim: tuple[int, ...], dtype=None) -> np.ndarray:
    """Host array of a real numeric dtype with one of the allowed ndims, non-empty and all finite.

    CuPy arrays are accepted and brought to the host only for the check's sake by the caller.
    """
    if hasattr(a, "__cuda_array_interface__"):
        import cupy

        a = cupy.asnumpy(a)
    try:
        a = np.asarray(a)
    except Exception as e:
        raise TypeError(f"{name} must be array-like, got {type(a).__name__} ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if np.iscomplexobj(a):
        raise TypeError(f"{name} must be real, got complex dtype {a.dtype}")
    if a.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {a.shape}")
    if a.size == 0 or a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); need at least one sample")
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} NaN/inf value(s)")
    return a if dtype is None else a.astype(dtype, copy=False)


def features(X, n_features: int, dtype, name: str = "X") -> np.ndarray:
    """X (B, n_features) real and finite (a 1-D X is accepted when n_features == 1)."""
    X = numeric_array(name, X, (1, 2), dtype)
    if X.ndim == 1:
        if n_features != 1:
            raise ValueError(f"{name} must have shape (n_samples, {n_features}), got 1-D shape {X.shape}")
        X = X[:, None]
    if X.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (n_samples, {n_features}), got {X.shape}")
    return X


def targets(Y, n_samples: int, n_outputs: int, dtype, name: str = "Y") -> np.ndarray:
    """Y (B, n_outputs) real and finite, with as many rows as X (1-D when n_outputs == 1)."""
    Y = numeric_array(name, Y, (1, 2), dtype)
    if Y.shape[0] != n_samples:
        raise ValueError(f"{name} has {Y.shape[0]} samples but X has {n_samples}")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.shape[1] != n_outputs:
        raise ValueError(f"{name} must have shape (n_samples, {n_outputs}), got {Y.shape}")
    return Y


def labels(y, n_samples: int, n_classes: int, name: str = "y") -> np.ndarray:
    """Integer class labels (B,) in [0, n_classes)."""
    y = numeric_array(name, y, (1, 2))
    if y.ndim == 2:
        if y.shape[1] != 1:
            raise ValueError(f"{name} must be integer class labels of shape (n_samples,), got {y.shape}")
        y = y[:, 0]
    if y.shape[0] != n_samples:
        raise ValueError(f"{name} has {y.shape[0]} samples but X has {n_samples}")
    if not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"{name} must hold integer class labels in [0, {n_classes}), got values in [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def hermitian(name: str, M, shape: tuple[int, ...], field: str) -> np.ndarray:
    """Full matrices of ``shape`` (..., n, n), finite, Hermitian (real symmetric for field "real") to
    1e-10 relative; complex entries are refused for the real field."""
    try:
        M = np.asarray(M)
    except Exception as e:
        raise TypeError(f"{name} must be array-like, got {type(M).__name__} ({e})") from None
    if M.dtype == object or not np.issubdtype(M.dtype, np.number):
        raise TypeError(f"{name} must hold numbers, got dtype {M.dtype}")
    if M.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {M.shape}")
    if field == "real" and np.iscomplexobj(M) and np.any(M.imag != 0):
        raise ValueError(f"{name} must be real for field='real', got complex entries")
    if not np.all(np.isfinite(M)):
        raise ValueError(f"{name} contains NaN/inf value(s)")
    asym = np.abs(M - np.conj(np.swapaxes(M, -1, -2))).max(initial=0)
    if asym > 1e-10 * max(np.abs(M).max(initial=0), 1e-300):
        kind = "symmetric" if field == "real" else "Hermitian"
        raise ValueError(f"{name} must be {kind}: max |M - Mᴴ| is {asym:.3e}")
    return M.real if field == "real" else M
