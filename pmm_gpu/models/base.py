"""The base PMM: configuration, one flat parameter buffer with named views, and the public API.

    M(x) = M_0 + Σ_i x_i M_i (+ s·C),   C = i Σ_{i>j} [M_i, M_j]   (i, j over 0..p)

M_i Hermitian (field "complex") or real symmetric (field "real"), stored packed (ops/assemble.py).
A model is a thin stateful shell over pmm_gpu/functional.py: it owns the parameters (``theta``, the flat
buffer Adam updates, with named views ``params``), the gradient buffer the trainer fills (``grad``,
views ``grads``), the optimizer state and the device counter of eigensolver failures; subclasses
say which functional forward/backward they wrap (``forward`` / ``backward``).
"""
from __future__ import annotations

import numpy as np

from .. import checks, io
from ..backend import DEVICES, check_eigh_solver, get_backend
from ..losses import get_loss
from ..ops.assemble import FIELDS, assemble_forward, hermitian_pack, packed_size
from ..train import fit

DTYPES = ("float32", "float64")
MODELS: dict[str, type] = {}


class PMM:
    """Base class: affine primaries M(x), flat parameters, and the public training API."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        MODELS[cls.__name__] = cls

    def __init__(self, n: int, n_features: int, *, field: str = "complex", dtype: str = "float64",
                 device: str = "auto", seed: int | None = 0, smoothing: float = 0.0, init_scale: float = 1.0,
                 eigh_solver: str = "auto"):
        self.n = checks.positive_int("n", n)
        self.n_features = checks.positive_int("n_features", n_features)
        self.field = checks.choice("field", field, FIELDS)
        self.dtype = checks.choice("dtype", str(np.dtype(dtype)) if _is_dtype(dtype) else dtype, DTYPES)
        self.device = checks.choice("device", device, DEVICES)
        self.smoothing = checks.finite_float("smoothing", smoothing)
        if self.smoothing and self.field == "real":
            raise ValueError("smoothing needs field='complex': C = i·Σ[M_i, M_j] is imaginary for real M_i")
        self.init_scale = checks.finite_float("init_scale", init_scale, minimum=0.0)
        self.seed = seed
        self.eigh_solver = check_eigh_solver(eigh_solver, self.n)
        self.backend = get_backend(device)
        # Matrices whose eigensolver reported non-convergence (Jacobi: sweep cap missed, or NaN/Inf),
        # counted on the device by every forward pass; fit resets it and reads it once per epoch.
        self.eigh_failures = self.backend.xp.zeros((), dtype=np.int64)
        self.real_dtype = np.dtype(self.dtype)
        self.packed_size = packed_size(self.n, self.field)
        self._build_params(self._init_params(np.random.default_rng(seed)))
        self.opt_state = None  # Adam moments and step, kept with the model so training can resume
        self.extra_state: dict[str, np.ndarray] = {}  # saved with the model (e.g. an estimator's scalers)
        self.history = None

    # --- parameters -------------------------------------------------------------------------------
    def _param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"primaries": (self.n_features + 1, self.packed_size)}

    def _init_params(self, rng) -> dict[str, np.ndarray]:
        """Primaries with spectra of width ≈ 2·init_scale: Wigner-semicircle scaling E|M_ij|² = s²/n."""
        return {"primaries": self._random_packed(rng, (self.n_features + 1,))}

    def _random_packed(self, rng, lead: tuple[int, ...]) -> np.ndarray:
        T = self.n * (self.n + 1) // 2
        diag = np.zeros(T, bool)
        diag[np.cumsum(np.r_[0, np.arange(self.n, 1, -1)])] = True  # row-major triu offsets of (i, i)
        std = np.full(self.packed_size, self.init_scale / np.sqrt(self.n))
        if self.field == "complex":  # split |M_ij|² between real and imaginary parts
            std[:T][~diag] /= np.sqrt(2)
            std[T:] /= np.sqrt(2)
        return rng.standard_normal(lead + (self.packed_size,)) * std

    def _views(self, flat) -> dict:
        """Named views into a flat buffer, in the order of ``_param_shapes``."""
        views, off = {}, 0
        for name, shape in self._param_shapes().items():
            size = int(np.prod(shape))
            views[name] = flat[off:off + size].reshape(shape)
            off += size
        return views

    def _build_params(self, values: dict[str, np.ndarray]):
        """One flat buffer holds every parameter; ``params`` are views into it (Adam runs on the buffer)."""
        size = sum(int(np.prod(s)) for s in self._param_shapes().values())
        self.theta = self.backend.xp.zeros(size, dtype=self.real_dtype)
        self.grad = self.backend.xp.zeros_like(self.theta)
        self.params, self.grads = self._views(self.theta), self._views(self.grad)
        for name, view in self.params.items():
            view[...] = self.backend.asarray(np.asarray(values[name]).reshape(view.shape), self.real_dtype)

    @property
    def n_params(self) -> int:
        """Number of trainable real parameters."""
        return int(self.theta.size)

    @property
    def n_outputs(self) -> int:
        raise NotImplementedError

    def get_config(self) -> dict:
        """Constructor arguments that rebuild this model (used by save/load)."""
        return {"n": self.n, "n_features": self.n_features, "field": self.field, "dtype": self.dtype,
                "device": self.device, "seed": self.seed, "smoothing": self.smoothing, "init_scale": self.init_scale,
                "eigh_solver": self.eigh_solver}

    def matrices(self) -> np.ndarray:
        """The primaries M_0, M_1..M_p as full matrices: NumPy (n_features + 1, n, n)."""
        return self._full_host("primaries")

    def _full_host(self, name: str) -> np.ndarray:
        packed = self.backend.to_numpy(self.params[name])
        lead = packed.shape[:-1]
        return assemble_forward(packed.reshape(-1, packed.shape[-1]), self.n, self.field).reshape(lead + (self.n,) * 2)

    def set_matrices(self, **matrices):
        """Set parameters from full matrices, e.g. ``set_matrices(primaries=Ms)`` with Ms (p+1, n, n)
        (and ``secondaries=Ds`` (Q, l, n, n) for the observable PMM): each must have the parameter's
        shape, be finite and Hermitian (real symmetric for field "real") to 1e-10 relative."""
        for name, M in matrices.items():
            if name not in self.params or name == "bias":
                raise ValueError(f"set_matrices takes {[k for k in self.params if k != 'bias']}, got {name!r}")
            shape = self.params[name].shape[:-1] + (self.n, self.n)
            M = checks.hermitian(name, M, shape, self.field)
            self.params[name][...] = self.backend.asarray(hermitian_pack(M, self.field), self.real_dtype)
        return self

    # --- the functional core, bound to this model's parameters -------------------------------------
    def forward(self, X, need_grad: bool = False):
        """X (B, p) device array -> (outputs (B, n_outputs), cache for ``backward`` or None)."""
        raise NotImplementedError

    def _backward_fn(self, cache, gout, input_grad: bool) -> dict:
        raise NotImplementedError

    def backward(self, cache, gout, grad=None):
        """Write ∂L/∂θ into the flat buffer ``grad`` (default ``self.grad``) given gout = ∂L/∂outputs."""
        views = self.grads if grad is None else self._views(grad)
        for name, g in self._backward_fn(cache, gout, input_grad=False).items():
            views[name][...] = g
        return views

    def device_loss_and_grad(self, X, Y, loss_fn, grad=None):
        """One training step's math on device arrays (X, Y already checked): the loss value (a 0-d
        device array, never a host float) and ∂L/∂θ written into ``grad`` (default ``self.grad``)."""
        out, cache = self.forward(X, need_grad=True)
        value, gout = loss_fn(out, Y)
        self.backward(cache, gout, grad)
        return value

    def check_targets(self, Y, n_samples, loss="mse"):
        """Host targets for ``loss``: integer labels (B,) for cross_entropy, else (B, n_outputs) reals."""
        if loss == "cross_entropy":
            return checks.labels(Y, n_samples, self.n_outputs)
        return checks.targets(Y, n_samples, self.n_outputs, self.real_dtype)

    # --- public API --------------------------------------------------------------------------------
    def predict(self, X, *, batch_size: int = 65536, as_numpy: bool = True):
        """Model outputs for X (B, n_features): (B, n_outputs), NumPy unless ``as_numpy=False``.

        Runs in chunks of ``batch_size`` samples so memory stays bounded for any B.
        """
        X = checks.features(X, self.n_features, self.real_dtype)
        batch_size = checks.positive_int("batch_size", batch_size)
        out = [self.forward(self.backend.asarray(X[s:s + batch_size]))[0] for s in range(0, len(X), batch_size)]
        out = self.backend.xp.concatenate(out, axis=0)
        return self.backend.to_numpy(out) if as_numpy else out

    def loss_and_grad(self, X, Y, loss="mse", *, huber_delta: float = 1.0):
        """(loss, grads) for the batch (X, Y): loss a float, grads NumPy arrays keyed like ``params``.
        Thread-safe: the gradient goes to a buffer of this call, not to the shared ``grad``."""
        X = checks.features(X, self.n_features, self.real_dtype)
        Y = self.check_targets(Y, len(X), loss)
        grad = self.backend.xp.empty_like(self.theta)
        value = self.device_loss_and_grad(self.backend.asarray(X), self.backend.asarray(Y),
                                          get_loss(loss, huber_delta), grad)
        return float(value), {k: self.backend.to_numpy(g).copy() for k, g in self._views(grad).items()}

    def fit(self, X, Y, **kwargs):
        """Train with Adam; see ``pmm_gpu.train.fit`` for the arguments. Returns the history dict."""
        return fit(self, X, Y, **kwargs)

    def save(self, path):
        """Write the model (config, parameters, optimizer state, extra state) to an .npz file atomically."""
        arrays = {"params": self.backend.to_numpy(self.theta)}
        if self.opt_state is not None:
            arrays.update({f"adam_{k}": self.backend.to_numpy(v) for k, v in self.opt_state.items()})
        arrays.update({f"extra_{k}": np.asarray(v) for k, v in self.extra_state.items()})
        io.write_model_file(path, type(self).__name__, self.get_config(), arrays)

    def __repr__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({cfg})"


def _is_dtype(d) -> bool:
    try:
        np.dtype(d)
        return True
    except TypeError:
        return False
