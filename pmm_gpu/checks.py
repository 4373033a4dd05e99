"""Input validation: every public entry point turns bad input into one clear ValueError/TypeError
naming the argument, what was expected and what arrived — never a crash deep inside NumPy or CUDA."""
from __future__ import annotations

import inspect
import math

import numpy as np

from ._xp import array_module


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


def finite_float(name: str, value, minimum: float | None = None, *, positive: bool = False,
                 below: float | None = None) -> float:
    """A finite real number, optionally >= ``minimum``, > 0 (``positive``) and < ``below``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}") from None
    bounds = [f">= {minimum}" if minimum is not None else "", "> 0" if positive else "",
              f"< {below}" if below is not None else ""]
    if (not np.isfinite(v) or (minimum is not None and v < minimum) or (positive and v <= 0)
            or (below is not None and v >= below)):
        bound = " and ".join(b for b in bounds if b)
        raise ValueError(f"{name} must be a finite number{' ' + bound if bound else ''}, got {value!r}")
    return v


def betas(value) -> tuple[float, float]:
    """Adam's (β1, β2): a pair of numbers in [0, 1)."""
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {type(value).__name__} {value!r}") from None
    if len(pair) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {len(pair)} value(s): {value!r}")
    return tuple(finite_float(f"betas[{i}]", b, minimum=0.0, below=1.0) for i, b in enumerate(pair))


def seed(name: str, value) -> int | None:
    """A random seed: None or an int >= 0 (NumPy integers become Python ints, so configs stay JSON)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be None or an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be None or an int >= 0, got {value}")
    return int(value)


def numeric_array(name: str, a, ndim: tuple[int, ...], dtype=None) -> np.ndarray:
    """Host array of a real numeric dtype with one of the allowed ndims, non-empty and all finite.

    The finiteness check runs after the cast to ``dtype``: 1e39 is finite in float64 but inf in float32.
    CuPy arrays are brought to the host for the check's sake.
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
    if a.ndim == 0 or a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); need at least one sample")
    if a.size == 0:
        raise ValueError(f"{name} has no columns (shape {a.shape}); need at least one")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains {_count_nonfinite(a)} NaN/inf value(s)")
    if dtype is not None and a.dtype != np.dtype(dtype):
        with np.errstate(over="ignore"):
            a = a.astype(dtype)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has {_count_nonfinite(a)} value(s) beyond the range of {np.dtype(dtype)} "
                             f"(|x| > {np.finfo(dtype).max:.3g}): they would become inf")
    return a


def _count_nonfinite(a) -> int:
    return int(np.size(a) - np.count_nonzero(np.isfinite(a)))


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


def overflow_error(what: str, X, detail: str = "non-finite outputs") -> ValueError:
    """The error for a non-finite result from finite, checked inputs: M(x) (or the loss) overflowed, e.g.
    |x| near the dtype's limit, or the parameters are huge or non-finite. It names X and its magnitude."""
    X = np.asarray(X)
    amax = float(np.abs(X).max(initial=0)) if X.size else 0.0
    return ValueError(f"{what}: {detail} for finite X (|X| up to {amax:.3g}, {X.dtype}): M(x) or the loss "
                      "overflows; scale X (and Y) down, e.g. standardize them, or check the model's parameters "
                      "for huge or non-finite values")


def finite_result(what: str, value, X, detail: str = "non-finite outputs") -> None:
    """Raise ``overflow_error`` when ``value`` (a host or device array) has NaN/inf although X was finite."""
    xp = array_module(value)
    if not bool(xp.isfinite(value).all()):
        raise overflow_error(what, X, detail)


def model_config(where: str, cls, config: dict, n_params: int) -> dict:
    """Check a saved ``config`` before ``cls(**config)`` is built from it (``models.load``): its keys are
    among the constructor's arguments, the size arguments are ints >= 1, and the parameter count they
    imply (``cls.param_shapes``) equals ``n_params``, what the file holds. So a tiny file claiming
    n = 30000 is refused before anything of that size is allocated. ValueError starting with ``where``."""
    accepted = constructor_args(cls)
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(f"{where}: config has unknown key(s) {unknown} for {cls.__name__} "
                         f"(expected some of {sorted(accepted)})")
    missing = sorted(k for k, d in accepted.items() if d is inspect.Parameter.empty and k not in config)
    if missing:
        raise ValueError(f"{where}: config lacks the required key(s) {missing} for {cls.__name__}")
    full = {**{k: d for k, d in accepted.items() if d is not inspect.Parameter.empty}, **config}
    try:
        for k in ("n", "n_features", "n_outputs", "n_secondaries", "rank"):
            if full.get(k) is not None:
                positive_int(k, full[k])
        for k in ("constant", "bias"):
            if k in full:
                choice(k, full[k], (True, False))
        expected = sum(math.prod(shape) for shape in cls.param_shapes(full).values())
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: config is invalid for {cls.__name__}: {e}") from None
    if expected != n_params:
        raise ValueError(f"{where}: its config describes {cls.__name__} with {expected} parameters "
                         f"(n = {full['n']}), but its parameter buffer holds {n_params}")
    return config


def constructor_args(cls) -> dict:
    """{name: default} of every keyword ``cls(...)`` accepts, through the ``**kwargs`` chain of its bases
    (inspect.Parameter.empty for a required one); a subclass's default wins."""
    args = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                args.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return args
