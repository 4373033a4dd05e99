"""Parametric Matrix Models: the shared affine primaries and the affine eigenvalue PMM (AE-PMM).

    M(x) = M_0 + Σ_i x_i M_i (+ s·C),   C = i Σ_{i>j} [M_i, M_j]   (i, j over 0..p)

M_i Hermitian (field "complex") or real symmetric (field "real"), stored packed as in assemble.py.
``PMM`` holds what every model shares: configuration, one flat parameter buffer with named views
(``params``), assembly of M(x) and its reverse mode, predict / loss_and_grad / fit / save.
Subclasses add their outputs in ``_forward`` / ``_backward``.
"""
from __future__ import annotations

import numpy as np

from . import checks
from .assemble import FIELDS, packed_size
from .backend import DEVICES, check_eigh_solver, get_backend, nvtx_range
from .eigen import WHICH, select, select_indices
from .losses import get_loss

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
        self._eigh_failures = self.backend.xp.zeros((), dtype=np.int64)
        self.real_dtype = np.dtype(self.dtype)
        self.P = packed_size(self.n, self.field)
        self._build_params(self._init_params(np.random.default_rng(seed)))
        self.opt_state = None  # Adam moments and step, kept with the model so training can resume
        self.extra_state: dict[str, np.ndarray] = {}  # saved with the model (e.g. an estimator's scalers)
        self.history = None

    # --- parameters -------------------------------------------------------------------------------
    def _param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"primaries": (self.n_features + 1, self.P)}

    def _init_params(self, rng) -> dict[str, np.ndarray]:
        """Primaries with spectra of width ≈ 2·init_scale: Wigner-semicircle scaling E|M_ij|² = s²/n."""
        return {"primaries": self._random_packed(rng, (self.n_features + 1,))}

    def _random_packed(self, rng, lead: tuple[int, ...]) -> np.ndarray:
        T = self.n * (self.n + 1) // 2
        diag = np.zeros(T, bool)
        diag[np.cumsum(np.r_[0, np.arange(self.n, 1, -1)])] = True  # row-major triu offsets of (i, i)
        std = np.full(self.P, self.init_scale / np.sqrt(self.n))
        if self.field == "complex":  # split |M_ij|² between real and imaginary parts
            std[:T][~diag] /= np.sqrt(2)
            std[T:] /= np.sqrt(2)
        return rng.standard_normal(lead + (self.P,)) * std

    def _build_params(self, values: dict[str, np.ndarray]):
        """One flat buffer holds every parameter; ``params`` are views into it (Adam runs on the buffer)."""
        shapes = self._param_shapes()
        sizes = [int(np.prod(s)) for s in shapes.values()]
        self._flat = self.backend.xp.zeros(sum(sizes), dtype=self.real_dtype)
        self._grad = self.backend.xp.zeros_like(self._flat)
        self.params, self._grads, off = {}, {}, 0
        for (name, shape), size in zip(shapes.items(), sizes):
            self.params[name] = self._flat[off:off + size].reshape(shape)
            self._grads[name] = self._grad[off:off + size].reshape(shape)
            self.params[name][...] = self.backend.asarray(np.asarray(values[name]).reshape(shape), self.real_dtype)
            off += size

    @property
    def n_params(self) -> int:
        """Number of trainable real parameters."""
        return int(self._flat.size)

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
        return _unpack_host(self.backend.to_numpy(self.params["primaries"]), self.n, self.field)

    # --- M(x) and its reverse mode ---------------------------------------------------------------
    def _eigh(self, M, vectors: bool = True):
        """(w, V) of M (B, n, n) by the backend's solver ``eigh_solver``; non-convergence is counted.
        vectors=False: eigenvalues only, V is None."""
        return self.backend.eigh(M, self.eigh_solver, self._eigh_failures, vectors)

    def _assemble_eigh(self, X, vectors: tuple[int, str] | None = None):
        """X (B, p) -> (w (B, n), V, X1 (B, p+1)): the eigendecomposition of M(x).

        V (B, n, n) all eigenvectors; with ``vectors = (k, which)`` only the k that
        ``select_indices(w, k, which)`` picks, V (B, n, k) in that order (k = 0: eigenvalues only).
        One fused launch (assemble + Jacobi, no (B, n, n) round trip; only the requested eigenvectors
        written) where the backend has one for ``eigh_solver`` and there is no smoothing term;
        otherwise ``_assemble`` then ``_eigh``, and the columns are selected here.
        """
        k, which = vectors if vectors is not None else (None, "SA")
        if not self.smoothing:
            fused = self.backend.eigh_assemble(X, self.params["primaries"], self.n, self.field, self.eigh_solver,
                                               self._eigh_failures, k=k, which=which)
            if fused is not None:
                return (*fused, self._with_ones(X))
        with nvtx_range("assemble"):
            M, X1 = self._assemble(X)
        with nvtx_range("eigh"):
            w, V = self._eigh(M, vectors=k != 0)
        if vectors is not None and k != 0:
            V = select(w, V, select_indices(w, k, which))[1]
        return w, V, X1

    def _with_ones(self, X):
        """X1 = [1, X] (B, p+1): the coefficients of M_0, M_1..M_p."""
        xp = self.backend.xp
        return xp.concatenate([xp.ones((X.shape[0], 1), dtype=X.dtype), X], axis=1)

    def _assemble(self, X):
        """X (B, p) device array -> (M (B, n, n), X1 (B, p+1)).  Mp = X1 @ P, unpacked, (+ s·C)."""
        X1 = self._with_ones(X)
        Mp = X1 @ self.params["primaries"]  # (B, P): one GEMM over the batch
        M = self.backend.assemble_forward(Mp, self.n, self.field)
        if self.smoothing:  # s·C added to every sample (packing C into Mp would index the device
            C = self._smoothing_matrix()  # array with host index arrays: a copy per step)
            M += (0.5 * self.smoothing) * (C + self.backend.xp.conj(C.T))  # exactly Hermitian
        return M, X1

    def _assemble_backward(self, X1, Abar):
        """Ā (B, n, n) -> ∂L/∂primaries (p+1, P):  M̄_i = Σ_b x1_{b,i} Ā_b as one GEMM, projected."""
        g = X1.T @ self.backend.assemble_backward(Abar, self.n, self.field)  # (p+1, B) @ (B, P)
        if self.smoothing:
            g += self._smoothing_backward(Abar.sum(axis=0))
        return g

    def _full_primaries(self):
        return self.backend.assemble_forward(self.params["primaries"], self.n, self.field)

    def _smoothing_matrix(self):
        """C = i Σ_{i>j} [M_i, M_j] = i Σ_i [M_i, S_i],  S_i = Σ_{j<i} M_j (prefix sums)."""
        Ms = self._full_primaries()
        S = self.backend.xp.cumsum(Ms, axis=0) - Ms
        return 1j * (Ms @ S - S @ Ms).sum(axis=0)

    def _smoothing_backward(self, G):
        """Cotangent of the primaries through s·C, given G = Σ_b Ā_b (the batch-summed Ā).

        Differentiating C: M̄_k = i s [Σ_{j<k} M_j − Σ_{j>k} M_j, G] (Hermitian since G and M_j are),
        projected onto the parameterization.
        """
        xp = self.backend.xp
        Ms = self._full_primaries()
        below = xp.cumsum(Ms, axis=0) - Ms
        above = Ms.sum(axis=0) - below - Ms
        D = below - above
        Mbar = (1j * self.smoothing) * (D @ G - G @ D)
        return self.backend.assemble_backward(Mbar, self.n, self.field)

    # --- model outputs (subclasses) ----------------------------------------------------------------
    def _forward(self, X, need_grad: bool):
        """X (B, p) device array -> (outputs (B, n_outputs), cache for _backward)."""
        raise NotImplementedError

    def _backward(self, cache, gout):
        """Write ∂L/∂params into self._grads given gout = ∂L/∂outputs (B, n_outputs)."""
        raise NotImplementedError

    def _check_targets(self, Y, n_samples, loss="mse"):
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
        out = [self._forward(self.backend.asarray(X[s:s + batch_size]), need_grad=False)[0]
               for s in range(0, len(X), batch_size)]
        out = self.backend.xp.concatenate(out, axis=0)
        return self.backend.to_numpy(out) if as_numpy else out

    def _loss_and_grad(self, X, Y, loss_fn):
        """Device step: value (0-d device array); gradients written into the flat buffer self._grad."""
        out, cache = self._forward(X, need_grad=True)
        value, gout = loss_fn(out, Y)
        with nvtx_range("backward"):
            self._backward(cache, gout)
        return value

    def loss_and_grad(self, X, Y, loss="mse", *, huber_delta: float = 1.0):
        """(loss, grads) for the batch (X, Y): loss a float, grads NumPy arrays keyed like ``params``."""
        X = checks.features(X, self.n_features, self.real_dtype)
        Y = self._check_targets(Y, len(X), loss)
        loss_fn = get_loss(loss, huber_delta)
        value = self._loss_and_grad(self.backend.asarray(X), self.backend.asarray(Y), loss_fn)
        return float(value), {k: self.backend.to_numpy(g).copy() for k, g in self._grads.items()}

    def fit(self, X, Y, **kwargs):
        """Train with Adam; see ``pmm_gpu.train.fit`` for the arguments. Returns the history dict."""
        from .train import fit

        return fit(self, X, Y, **kwargs)

    def save(self, path):
        """Write the model (config, parameters, optimizer state) to an .npz file atomically."""
        from .io import save

        save(self, path)

    def __repr__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({cfg})"


class AffineEigenvaluePMM(PMM):
    """AE-PMM: the outputs are k selected eigenvalues of M(x) (DESIGN.md §1).

        y(x) = (λ_s(M(x)))_{s ∈ S},  S chosen by ``which`` (SA, LA, SM, LM, EA, EM, IA, IM),
        reverse mode Ā = V_S diag(ȳ) V_Sᴴ (eigen.eigvals_vjp).

    n: matrix size; n_features: p; n_eig: k ≤ n; field "complex" (Hermitian, n² real parameters per
    matrix) or "real" (symmetric, n(n+1)/2); dtype float32/float64 (complex64/128 matrices);
    device "auto"/"cpu"/"cuda"; seed: initialization; smoothing: s (complex field only);
    init_scale: each M_i starts as a random matrix with spectrum in about [−2, 2]·init_scale;
    eigh_solver: the CUDA eigensolver, "cusolver" (cupy.linalg.eigh), "jacobi" (pmm_gpu's batched
        Jacobi kernel, n <= 32; fused with the assembly of M(x) when smoothing = 0; matrices that miss
        its sweep cap are reported by ``fit`` once per epoch; ``predict`` then has the kernel write the
        eigenvalues only, and the AO-PMM's ``predict`` the observables only, eigenvectors staying in the
        kernel) or "auto" (backend.AUTO_JACOBI_MAX_N: cuSOLVER until a GPU measurement favours the
        kernel). The NumPy backend always uses numpy.linalg.eigh, the reference every solver is
        tested against.
    """

    def __init__(self, n: int, n_features: int, n_eig: int = 1, which: str = "SA", **kwargs):
        self.n_eig = checks.positive_int("n_eig", n_eig)
        if n_eig > checks.positive_int("n", n):
            raise ValueError(f"n_eig must be <= n = {n}, got {n_eig}")
        self.which = checks.choice("which", which, WHICH)
        super().__init__(n, n_features, **kwargs)

    @property
    def n_outputs(self) -> int:
        return self.n_eig

    def get_config(self) -> dict:
        return {**super().get_config(), "n_eig": self.n_eig, "which": self.which}

    def _forward(self, X, need_grad: bool):
        if not need_grad:  # inference: eigenvalues only (the Jacobi kernel then writes no eigenvector)
            w, _, _ = self._assemble_eigh(X, vectors=(0, self.which))
            return self.backend.xp.take_along_axis(w, select_indices(w, self.n_eig, self.which), axis=1), None
        w, V, X1 = self._assemble_eigh(X)
        w_S, V_S = select(w, V, select_indices(w, self.n_eig, self.which))
        return w_S, (X1, V_S)

    def _backward(self, cache, gout):
        X1, V_S = cache
        self._grads["primaries"][...] = self._assemble_backward(X1, self.backend.eigvals_vjp(V_S, gout))


def _is_dtype(d) -> bool:
    try:
        np.dtype(d)
        return True
    except TypeError:
        return False


def _unpack_host(packed: np.ndarray, n: int, field: str) -> np.ndarray:
    from .assemble import assemble_forward

    lead = packed.shape[:-1]
    return assemble_forward(packed.reshape(-1, packed.shape[-1]), n, field).reshape(lead + (n, n))
