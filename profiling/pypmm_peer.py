"""The bench's `pypmm` engine: the authors' JAX library ``parametricmatrixmodels`` (GitHub
Parametric-Matrix-Models/pyPMM), driven through its own public API. Optional: only imported when the
library is installed (never vendored; see profiling/README.md for how to install it for a measurement).

What it runs, per case:
  A       ``modules.AffineEigenvaluePMM(matrix_size=n, num_eig=k, which="SA", Ms=...)``
  B, C, D ``modules.AffineObservablePMM(matrix_size=n, num_eig=r, which="LM", num_secondaries=l,
          output_size=q, Ms=..., Ds=...)`` (+ its ``Bias`` module, set to pmm_gpu's bias)
  training: ``Model.train`` (one jitted ``lax.while_loop`` over epochs with ``lax.fori_loop`` over
          batches, its own complex Adam), inference: ``Model.__call__``.

Parameters: pmm_gpu's packed primaries/secondaries are unpacked into the full complex Hermitian
matrices the library stores (M_i (p+1, n, n), D_ql (q, l, n, n)), so both start from the same model
function (the initial losses agree to rounding; ``initial_loss_rel``). The library then trains the
full complex n×n arrays (Hermitian part taken in the forward pass) with its complex Adam, whose second
moment is |g|² per complex entry: the optimizer trajectory differs from pmm_gpu's per-real-parameter
Adam, and its batches come from ``jax.random`` permutations, so the final losses are reported but are
not expected to agree.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from pmm_gpu.ops.assemble import assemble_forward


def available() -> str | None:
    """None when the library can be driven here, else why not."""
    try:
        import jax  # noqa: F401
        import parametricmatrixmodels  # noqa: F401
    except Exception as e:  # ImportError, or a jax version it does not support (jax._src.prng moved in 0.10)
        return f"parametricmatrixmodels is not importable ({type(e).__name__}: {str(e)[:80]})"
    return None


def _full(packed: np.ndarray, n: int) -> np.ndarray:
    """pmm_gpu packed (..., P) -> full complex Hermitian (..., n, n)."""
    lead = packed.shape[:-1]
    return assemble_forward(np.ascontiguousarray(packed.reshape(-1, packed.shape[-1])), n, "complex").reshape(
        lead + (n, n))


class PyPMMEngine:
    name = "pypmm"

    # how the library's training differs from pmm_gpu's in the work it does; printed as a bench note
    NOTE = ("pypmm: Model.train with its own complex Adam (2nd moment |g|² per complex entry of the full n×n "
            "arrays, gradient clip 1e3), jax.random batch order, and one validation forward pass per epoch "
            "(validation set = the first batch, to keep that extra work small); returns the best-validation "
            "parameters. Each Model.train call re-traces and re-compiles its jitted loop: a timed run of E "
            "epochs runs E+1 and times the last E between per-epoch callback timestamps (compile excluded); "
            "warm-up = the first call (compile + 2 epochs). "
            "Same initial parameters (initial loss agrees), final loss not comparable (different optimizer "
            "and batches, and more epochs: 2 in the warm-up and E+1 per timed run, 11 against pmm_gpu's 7 "
            "with --quick; profiling/time_to_accuracy.py compares losses at equal epochs).")

    def __init__(self, case, device, dtype, X, Y, lr, params):
        import jax

        jax.config.update("jax_enable_x64", dtype == "float64")
        if device != "cpu":
            jax.config.update("jax_platform_name", "gpu")
        import jax.numpy as jnp
        from parametricmatrixmodels import modules

        self.jax, self.jnp, self.case, self.lr = jax, jnp, case, lr
        n = case.n
        Ms = _full(params["primaries"], n)
        if case.kind == "eigenvalue":
            self.model = modules.AffineEigenvaluePMM(matrix_size=n, num_eig=case.k,
                                                     which=case.model_kw.get("which", "SA"), Ms=jnp.asarray(Ms))
        else:
            Ds = _full(params["secondaries"], n)
            self.model = modules.AffineObservablePMM(
                matrix_size=n, num_eig=case.k, which="LM", num_secondaries=Ds.shape[1], output_size=Ds.shape[0],
                centered=True, bias_term="bias" in params, Ms=jnp.asarray(Ms), Ds=jnp.asarray(Ds))
        self.model.compile(jax.random.key(0), (case.p,))
        if case.kind == "observable" and "bias" in params:
            p = self.model.get_params()
            b = jnp.asarray(params["bias"], dtype=X.dtype).reshape(p[-1].shape)
            self.model.set_params(tuple(p[:-1]) + (b,))
        self.X = jnp.asarray(X)
        if case.loss == "cross_entropy":
            self.Y = jnp.asarray(Y.reshape(-1, 1).astype(X.dtype))  # its trainer wants inexact targets
            self.loss_arg = self._cross_entropy
        else:
            self.Y = jnp.asarray(Y)
            self.loss_arg = "mse"
        self.batch = case.batch
        self.seed = 0
        self.initial_loss = self.loss()

    @staticmethod
    def _cross_entropy(epoch, X, Y, Y_pred):
        import jax
        import jax.numpy as jnp

        z = Y_pred.real
        return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, Y.astype(jnp.int32), axis=1)[:, 0])

    def _stamp_callback(self, batch_rng, epoch, params):
        """Model.train's per-epoch callback (inside its jitted loop): a host timestamp once the epoch's
        parameters exist (the data dependency on them orders it after the epoch's steps)."""
        jax, jnp = self.jax, self.jnp
        leaf = jax.tree.leaves(params)[0]
        jax.debug.callback(lambda _: self.stamps.append(time.perf_counter()), jnp.real(leaf.ravel()[0]))
        return batch_rng, params

    def _fit(self, epochs: int) -> float:
        self.seed += 1
        self.stamps = []
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # "double precision may be slower": float64 is what the bench compares
            warnings.simplefilter("ignore", UserWarning)
            self.model.train(self.X, self.Y, X_val=self.X[:self.batch], Y_val=self.Y[:self.batch],
                             loss_fn=self.loss_arg, lr=self.lr, batch_size=self.batch, epochs=epochs,
                             early_stopping_patience=10**9, verbose=False, batch_rng=self.seed,
                             callback=self._stamp_callback,
                             resume=self.model._optimizer_state is not None)  # keep the Adam moments
        self.jax.block_until_ready(self.model.get_params())
        return time.perf_counter() - t0

    def train(self, epochs: int) -> float:
        """Seconds for ``epochs`` whole epochs. Each Model.train call re-traces and re-compiles the library's
        jitted loop, so the call runs epochs + 1 epochs and the time between the end of the first and the
        end of the last epoch (per-epoch callback timestamps) is returned: compilation excluded."""
        self._fit(epochs + 1)
        assert len(self.stamps) == epochs + 1, self.stamps
        return self.stamps[-1] - self.stamps[0]

    def infer(self) -> float:
        t0 = time.perf_counter()
        out = self.model(self.X)
        self.jax.block_until_ready(out)
        return time.perf_counter() - t0

    def loss(self) -> float:
        jnp = self.jnp
        z = self.model(self.X)
        if self.case.loss == "cross_entropy":
            return float(self._cross_entropy(0, self.X, self.Y, z))
        return float(jnp.mean(jnp.abs(z - self.Y) ** 2))
