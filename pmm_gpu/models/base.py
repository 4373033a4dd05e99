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
from ..backend import DEVICES, check_eigh_solver, get_backend, resolve_eigh_solver
from ..losses import get_loss, with_sigma
from ..functional import primaries_backward, primaries_forward
from ..ops.assemble import FIELDS, assemble_forward, hermitian_pack, packed_size
from ..ops.lowrank import lowrank_matrices
from ..train import fit, sigma_array
from . import jacobian

DTYPES = ("float32", "float64")
AUTO_MEMORY_FRACTION = 0.25  # micro_batch="auto": the share of the free memory one step may use
MODELS: dict[str, type] = {}


class PMM:
    """Base class: affine primaries M(x), flat parameters, and the public training API."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        MODELS[cls.__name__] = cls

    def __init__(self, n: int, n_features: int, *, field: str = "complex", dtype: str = "float64",
                 device: str = "auto", seed: int | None = 0, smoothing: float = 0.0, init_scale: float = 1.0,
                 eigh_solver: str = "auto", rank: int | None = None, constant: bool = True, Ms=None):
        self.n = checks.positive_int("n", n)
        self.rank = None if rank is None else checks.positive_int("rank", rank)
        if self.rank is not None and self.rank > self.n:
            raise ValueError(f"rank must be <= n = {self.n}, got {rank}")
        self.constant = bool(checks.choice("constant", constant, (True, False)))
        self.n_features = checks.positive_int("n_features", n_features)
        self.field = checks.choice("field", field, FIELDS)
        self.dtype = checks.choice("dtype", str(np.dtype(dtype)) if _is_dtype(dtype) else dtype, DTYPES)
        self.device = checks.choice("device", device, DEVICES)
        self.smoothing = checks.finite_float("smoothing", smoothing)
        if self.smoothing and self.field == "real":
            raise ValueError("smoothing needs field='complex': C = i·Σ[M_i, M_j] is imaginary for real M_i")
        self.init_scale = checks.finite_float("init_scale", init_scale, minimum=0.0)
        self.seed = checks.seed("seed", seed)  # None or an int >= 0 (NumPy ints become ints)
        self.eigh_solver = check_eigh_solver(eigh_solver, self.n)
        self.backend = get_backend(device)
        # Matrices whose eigensolver reported non-convergence (Jacobi: sweep cap missed, or NaN/Inf),
        # counted on the device by every forward pass; fit resets it and reads it once per epoch.
        self.eigh_failures = self.backend.xp.zeros((), dtype=np.int64)
        self.real_dtype = np.dtype(self.dtype)
        self.packed_size = packed_size(self.n, self.field)
        self._build_params(self._init_params(np.random.default_rng(seed)))
        if Ms is not None:
            self.set_matrices(primaries=Ms)
        self.opt_state = None  # Adam moments and step, kept with the model so training can resume
        self.extra_state: dict[str, np.ndarray] = {}  # saved with the model (e.g. an estimator's scalers)
        self.history = None

    # --- parameters -------------------------------------------------------------------------------
    @property
    def n_primaries(self) -> int:
        """m, the number of stored primaries: p + 1 (M_0..M_p), or p with constant=False (no M_0)."""
        return self.n_features + int(self.constant)

    @classmethod
    def param_shapes(cls, config: dict) -> dict[str, tuple[int, ...]]:
        """The parameters' shapes for the constructor arguments ``config`` (every key of ``get_config``),
        without building a model: ``load`` checks a file's parameter count with it before allocating."""
        n, r, field = config["n"], config["rank"], config["field"]
        m = config["n_features"] + int(config["constant"])
        if r is None:
            return {"primaries": (m, packed_size(n, field))}
        return {"primaries_l": (m, r), "primaries_u": (m, n, r, 2) if field == "complex" else (m, n, r)}

    def _param_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.param_shapes(self.get_config())

    def _init_params(self, rng) -> dict[str, np.ndarray]:
        """Primaries with spectra of width ≈ 2·init_scale: Wigner-semicircle scaling E|M_ij|² = s²/n.
        Low rank: l_ik ~ N(0, init_scale²), u_ik entries with E|u|² = 1/n (so ‖u_ik‖ ≈ 1)."""
        m = self.n_primaries
        if self.rank is None:
            return {"primaries": self._random_packed(rng, (m,))}
        ls = self.init_scale * rng.standard_normal((m, self.rank))
        shape = self._param_shapes()["primaries_u"]
        scale = 1 / np.sqrt(self.n * (2 if self.field == "complex" else 1))
        return {"primaries_l": ls, "primaries_u": scale * rng.standard_normal(shape)}

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
                "eigh_solver": self.eigh_solver, "rank": self.rank, "constant": self.constant}

    def matrices(self) -> np.ndarray:
        """The primaries M_0, M_1..M_p as full matrices: NumPy (n_features + 1, n, n); (n_features, n, n)
        M_1..M_p with constant=False; for rank=r the products U_i diag(l_i) U_iᴴ."""
        if self.rank is None:
            return self._full_host("primaries")
        ls, us = (self.backend.to_numpy(self.params[k]) for k in ("primaries_l", "primaries_u"))
        return lowrank_matrices(ls, us, self.field)

    def _full_host(self, name: str) -> np.ndarray:
        packed = self.backend.to_numpy(self.params[name])
        lead = packed.shape[:-1]
        return assemble_forward(packed.reshape(-1, packed.shape[-1]), self.n, self.field).reshape(lead + (self.n,) * 2)

    def set_matrices(self, **matrices):
        """Set parameters from full matrices, e.g. ``set_matrices(primaries=Ms)`` with Ms (p+1, n, n)
        (and ``secondaries=Ds`` (Q, l, n, n) for the observable PMM): each must have the parameter's
        shape, be finite and Hermitian (real symmetric for field "real") to 1e-10 relative.
        With constant=False the primaries are M_1..M_p (n_features, n, n); with rank=r each M_i must have
        rank <= r (it is set to U_i diag(l_i) U_iᴴ from its r eigenpairs of largest |λ|)."""
        names = [k for k in self.params if k not in ("bias", "primaries_l", "primaries_u")] + (
            ["primaries"] if self.rank is not None else [])
        for name, M in matrices.items():
            if name not in names:
                raise ValueError(f"set_matrices takes {names}, got {name!r}")
            if name == "primaries" and self.rank is not None:
                self._set_lowrank(checks.hermitian(name, M, (self.n_primaries, self.n, self.n), self.field))
                continue
            shape = self.params[name].shape[:-1] + (self.n, self.n)
            M = checks.hermitian(name, M, shape, self.field)
            self.params[name][...] = self.backend.asarray(hermitian_pack(M, self.field), self.real_dtype)
        return self

    def _set_lowrank(self, Ms):
        """l_i, U_i from the r eigenpairs of largest |λ| of each M_i; ValueError if any other |λ| exceeds
        1e-10 relative (M_i not of rank <= r)."""
        w, V = np.linalg.eigh(Ms)  # (m, n), (m, n, n)
        order = np.argsort(-np.abs(w), axis=1, kind="stable")
        rest = np.take_along_axis(np.abs(w), order[:, self.rank:], axis=1)
        bound = 1e-10 * max(np.abs(w).max(initial=0), 1e-300)
        if rest.size and rest.max() > bound:
            i = int(np.argmax(rest.max(axis=1)))
            raise ValueError(f"primaries[{i}] has rank > rank={self.rank}: its eigenvalue of rank {self.rank + 1} "
                             f"by |λ| is {rest[i, 0]:.3e}; pass matrices of rank <= {self.rank}")
        keep = order[:, :self.rank]
        U = np.take_along_axis(V, keep[:, None, :], axis=2)  # (m, n, r)
        us = np.stack([U.real, U.imag], axis=-1) if self.field == "complex" else U.real
        self.params["primaries_l"][...] = self.backend.asarray(np.take_along_axis(w, keep, axis=1), self.real_dtype)
        self.params["primaries_u"][...] = self.backend.asarray(us, self.real_dtype)

    def _primaries(self):
        """(packed full primaries (p+1, P), cache): ``functional.primaries_forward`` of the parameters."""
        return primaries_forward(self.params, field=self.field, constant=self.constant)

    @staticmethod
    def _primaries_grads(pcache, grads: dict) -> dict:
        """The functional backward's cotangents with "primaries" mapped onto the primary parameters."""
        grads = dict(grads)
        grads.update(primaries_backward(pcache, grads.pop("primaries")))
        return grads

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

    def device_loss_and_grad(self, X, Y, loss_fn, grad=None, micro_batch=None):
        """One training step's math on device arrays (X, Y already checked): the loss value (a 0-d
        device array, never a host float) and ∂L/∂θ written into ``grad`` (default ``self.grad``).

        micro_batch (``micro_batch_size``: None, an int or "auto"): with m < B = len(X), the step runs
        over the micro-batches c of b_c <= m samples one after the other, each forward's cache freed
        before the next, so its working memory is that of m samples. Every loss is a mean over its
        batch, so with w_c = b_c / B

            L = Σ_c w_c L_c,     ∂L/∂θ = Σ_c ∂L_c/∂θ |_{∂L/∂out scaled by w_c}

        (the reverse mode is linear in the output cotangent): the unsplit gradient, up to rounding.
        With m >= B it is exactly the unsplit computation. Within each (micro-)batch the backend's
        threads share the forward and backward passes (``_split_step``).
        """
        B = len(X)
        m = self.micro_batch_size(micro_batch, B)
        flat = self.grad if grad is None else grad
        views = self._views(flat)
        if m >= B:
            value, grads = self._split_step(X, Y, loss_fn, 1.0)
            for name, g in grads.items():
                views[name][...] = g
            return value
        flat.fill(0)
        total = None
        for s in range(0, B, m):
            w = min(m, B - s) / B
            value, grads = self._split_step(X[s:s + m], Y[s:s + m], loss_fn, w)
            for name, g in grads.items():
                views[name] += g
            total = value if total is None else total + value
            del grads  # before the next micro-batch's forward allocates
        return total

    def _split_step(self, X, Y, loss_fn, weight: float):
        """(w·L, w·∂L/∂θ as a dict of parameter arrays) for one batch, L = loss_fn(outputs, Y) and w = weight.

        The forward and the backward run over the backend's ``split`` of the batch (on the CPU one part
        per thread: the whole per-sample pipeline, not just the eigensolver, in parallel); the loss is
        evaluated once on the joined outputs, so any loss gets its exact cotangent. One part (the CUDA
        backend, small batches, one thread) is exactly the unsplit computation; several differ from it
        by the rounding of the parameter cotangents' sum over the parts.
        """
        be = self.backend
        parts = be.split(len(X))
        fwd = be.map(lambda ab: self.forward(X[ab[0]:ab[1]], need_grad=True), parts)
        out = fwd[0][0] if len(fwd) == 1 else be.xp.concatenate([o for o, _ in fwd], axis=0)
        value, gout = loss_fn(out, Y)
        if weight != 1.0:
            value, gout = value * weight, gout * weight
        del out
        grads = be.map(lambda i: self._backward_fn(fwd[i][1], gout[parts[i][0]:parts[i][1]], input_grad=False),
                       range(len(parts)))
        total = grads[0]
        for g in grads[1:]:
            total = {name: total[name] + g[name] for name in total}
        return value, total

    def micro_batch_size(self, micro_batch, batch: int) -> int:
        """Samples per micro-batch of a step over ``batch`` samples: ``batch`` for None (no split), the
        int itself (>= 1), or for "auto" the most whose working memory (``step_bytes_per_sample``
        each) fits in AUTO_MEMORY_FRACTION of the backend's free memory (``free_memory``)."""
        if micro_batch is None:
            return batch
        if isinstance(micro_batch, str):
            if micro_batch != "auto":
                raise ValueError(f"micro_batch must be an int >= 1, 'auto' or None, got {micro_batch!r}")
            budget = int(AUTO_MEMORY_FRACTION * self.backend.free_memory())
            return max(1, budget // self.step_bytes_per_sample())
        return checks.positive_int("micro_batch", micro_batch)

    def step_bytes_per_sample(self) -> int:
        """Estimated peak working memory of one training step per sample, in bytes (for "auto"):

            e·(12 n² + w + 6 K·r(n + r)) + s·4 (p + 1 + P)

        e, s the complex and real item sizes; 12 n²: M, V, the eigensolver's copies, Ā and the reverse
        mode's temporaries; w = 1,100: cuSOLVER's batched Jacobi workspace per matrix (cupy/cupy#7261:
        ~1,050 elements, whatever n <= 32; CUDA backend with the cusolver solver only); K·r(n + r): the
        AO-PMM's D_k V_S, Q_k and their cotangents (K = Q·l secondaries, r selected); p + 1 + P: X1, Mp, Ḡ.
        profiling/step_memory.py measured 3.4–7.2 n²-arrays per sample on the CPU (n = 4..16, both
        models, complex128): this estimate is 2.6–4.2× those peaks, a margin for the GPU's allocator."""
        cplx = np.dtype(np.result_type(self.real_dtype, np.complex64)).itemsize
        n, r = self.n, getattr(self, "n_eig", self.n)
        K = int(np.prod(self._param_shapes().get("secondaries", (0, 0, 0))[:-1]))
        w = 1100 if self.backend.name == "cuda" and resolve_eigh_solver(self.eigh_solver, n) == "cusolver" else 0
        return cplx * (12 * n * n + w + 6 * K * r * (n + r)) + self.real_dtype.itemsize * 4 * (
            self.n_features + 1 + self.packed_size)

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
        try:
            out = [self.device_predict(self.backend.asarray(X[s:s + batch_size])) for s in range(0, len(X), batch_size)]
        except np.linalg.LinAlgError:  # LAPACK refuses M(x) with inf entries
            raise checks.overflow_error("predict", X, "the eigensolver failed") from None
        out = self.backend.xp.concatenate(out, axis=0)
        checks.finite_result("predict", out, X)  # e.g. X = ±1e308: −inf eigenvalues, never returned silently
        return self.backend.to_numpy(out) if as_numpy else out

    def device_predict(self, X):
        """Outputs (B, n_outputs) for a device batch X (B, p) (already checked), the forward run over the
        backend's ``split`` of the batch (on the CPU one part per thread)."""
        be = self.backend
        outs = be.map(lambda ab: self.forward(X[ab[0]:ab[1]])[0], be.split(len(X)))
        return outs[0] if len(outs) == 1 else be.xp.concatenate(outs, axis=0)

    def loss_and_grad(self, X, Y, loss="mse", *, huber_delta: float = 1.0, micro_batch=None, sigma=None):
        """(loss, grads) for the batch (X, Y): loss a float, grads NumPy arrays keyed like ``params``.
        Thread-safe: the gradient goes to a buffer of this call, not to the shared ``grad``.
        micro_batch: bound the working memory (``device_loss_and_grad``; same result to rounding).
        sigma: per-sample σ (B,) or (B, k) of the residuals (losses.py), as in ``fit``."""
        X = checks.features(X, self.n_features, self.real_dtype)
        Y = self.check_targets(Y, len(X), loss)
        grad = self.backend.xp.empty_like(self.theta)
        Yd, loss_fn = self.backend.asarray(Y), get_loss(loss, huber_delta)
        if sigma is not None:  # targets packed with σ, as fit does (train._losses_and_data)
            Yd = self.backend.xp.concatenate([Yd, sigma_array(self, sigma, Y.shape)], axis=1)
            loss_fn = with_sigma(loss_fn, Y.shape[1])
        try:
            value = self.device_loss_and_grad(self.backend.asarray(X), Yd, loss_fn, grad, micro_batch)
        except np.linalg.LinAlgError:
            raise checks.overflow_error("loss_and_grad", X, "the eigensolver failed") from None
        checks.finite_result("loss_and_grad", grad + value, X, "non-finite loss or gradient")  # one reduction
        return float(value), {k: self.backend.to_numpy(g).copy() for k, g in self._views(grad).items()}

    def grad_input(self, X, *, batch_size: int = 4096) -> np.ndarray:
        """Per-sample input Jacobian ∂y_bq/∂x_bi: NumPy (B, n_outputs, n_features) (models/jacobian.py)."""
        return jacobian.grad_input(self, X, batch_size)

    def grad_params(self, X, *, flat: bool = False):
        """Per-sample parameter Jacobian ∂y_bq/∂θ: dict of (B, n_outputs, *shape) keyed like ``params``, or
        (B, n_outputs, n_params) with flat=True (models/jacobian.py; one sample at a time)."""
        return jacobian.grad_params(self, X, flat)

    def astype(self, dtype: str) -> "PMM":
        """A copy of this model in ``dtype`` ("float32" or "float64"; complex64/complex128 matrices): the
        parameters and the Adam state cast, extra state and history copied. Train in float32, then
        ``m.astype("float64")`` for inference (the paper's complex128 evaluation); the copy trains on."""
        new = type(self)(**{**self.get_config(), "dtype": dtype})
        new.theta[...] = new.backend.asarray(self.backend.to_numpy(self.theta), new.real_dtype)
        if self.opt_state is not None:
            new.opt_state = {k: (np.array(int(v)) if k == "step" else new.backend.asarray(
                self.backend.to_numpy(v), new.real_dtype)) for k, v in self.opt_state.items()}
        new.extra_state = dict(self.extra_state)
        new.history = self.history
        return new

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
