"""JAX bindings (experimental): both PMM types as differentiable JAX functions, under jit, grad and vmap.

    eigenvalue_pmm(X, primaries)                      -> y (B, k)   the AE-PMM, pmm_gpu.functional
    observable_pmm(X, primaries, secondaries, bias)   -> z (B, Q)   the AO-PMM

Each is a ``jax.custom_vjp`` whose forward and backward are ``jax.pure_callback``s into pmm_gpu's NumPy
backend (``vmap_method="sequential"``: under vmap, one call per mapped element). The forward returns
the eigendecomposition (w, V) of M(x) as a residual, so the backward does not solve again
(``functional.*_forward(eig=...)``); cotangents follow dL = Σ ȳ·dy for X and the packed parameters.

Parameter layouts. ``primaries`` is pmm_gpu's packed (p+1, P) real array (ops/assemble.py), or pyPMM's
full-matrix layout Ms (p+1, n, n) (real or complex); ``secondaries`` likewise (Q, l, P) or (Q, l, n, n).
A full matrix M enters through its Hermitian (real: symmetric) part H(M) = (M + Mᴴ)/2, packed in jnp
(``hermitian_project``), so JAX differentiates the projection itself. Gradient convention for the full
layout: with M̄ = Σ_b x_b H(Ā_b) the Hermitian cotangent (dL = Re tr(M̄ᴴ dM) for every dM), ``jax.grad``
returns M̄ for real Ms and conj(M̄) = M̄ᵀ for complex Ms (JAX's convention for complex inputs:
∂L/∂Re M − i ∂L/∂Im M). Non-Hermitian parts of M get zero gradient.

Devices. The callbacks run on the host: on a GPU, JAX copies the inputs to the host and the results
back, and pmm_gpu's NumPy backend (not its CUDA kernels) does the work. Device buffers without a host
round trip (``jax.experimental.buffer_callback`` with XLA's stream, CuPy on top) are not implemented:
they could not be verified without a GPU. Use pmm_gpu.torch or pmm_gpu's own trainer for GPU training.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import checks, functional
from .backend import EIGH_SOLVERS
from .ops.assemble import FIELDS, n_from_packed, triu_pairs
from .ops.eigh import WHICH
from .ops.observable import FORMS

__all__ = ["eigenvalue_pmm", "observable_pmm", "hermitian_project"]


def hermitian_project(M, field: str):
    """Full matrices M (..., n, n) -> packed (..., P) of their Hermitian part H(M) = (M + Mᴴ)/2 (real:
    symmetric part), in jnp: a_ij = Re(M_ij + M_ji)/2 (i <= j), b_ij = Im(M_ij − M_ji)/2 (i < j). Equals
    ops.assemble.hermitian_pack on Hermitian M."""
    n = M.shape[-1]
    (iu, ju), (is_, js) = triu_pairs(n)
    a = jnp.real(M[..., iu, ju] + M[..., ju, iu]) / 2
    if field == "real":
        return a
    return jnp.concatenate([a, jnp.imag(M[..., is_, js] - M[..., js, is_]) / 2], axis=-1)


def _packed(name: str, A, field: str, lead: int):
    """A packed (lead + 1 dims) or full (lead + 2 dims) parameter array -> packed, real."""
    A = jnp.asarray(A)
    if A.ndim == lead + 2 and A.shape[-1] == A.shape[-2]:
        return hermitian_project(A, field)
    if A.ndim != lead + 1 or jnp.iscomplexobj(A):
        raise ValueError(f"{name} must be packed real (..., P) with {lead + 1} dims or full (..., n, n) with "
                         f"{lead + 2}; got shape {A.shape}, dtype {A.dtype}")
    return A


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _complex(dtype):
    return jnp.complex128 if dtype == jnp.float64 else jnp.complex64


def _host(fn, out_dtypes):
    """Wrap a NumPy function for pure_callback: inputs as NumPy arrays, outputs cast to ``out_dtypes``."""
    def call(*args):
        outs = fn(*[None if a is None else np.asarray(a) for a in args])
        return tuple(np.ascontiguousarray(o, dtype=d) for o, d in zip(outs, out_dtypes))
    return call


def _callback(fn, shapes, *args):
    return jax.pure_callback(_host(fn, [s.dtype for s in shapes]), tuple(shapes), *args, vmap_method="sequential")


# --- the eigenvalue PMM ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _eigenvalue_fn(n_eig: int, which: str, field: str, smoothing: float, eigh_solver: str):
    """custom_vjp (X (B, p), primaries (p+1, P)) -> y (B, k) for one static configuration."""
    cfg = dict(n_eig=n_eig, which=which, field=field, smoothing=smoothing, eigh_solver=eigh_solver, backend=None)

    def host_forward(X, P, need_grad):
        y, cache = functional.eigenvalue_pmm_forward(X, P, need_grad=need_grad, **cfg)
        return (y, cache["w"], cache["V"]) if need_grad else (y,)

    def host_backward(ybar, X, P, w, V):
        _, cache = functional.eigenvalue_pmm_forward(X, P, eig=(w, V), **cfg)
        g = functional.eigenvalue_pmm_backward(cache, ybar)
        return g["X"], g["primaries"]

    @jax.custom_vjp
    def f(X, P):
        return _callback(lambda X, P: host_forward(X, P, False), [_sds((X.shape[0], n_eig), X.dtype)], X, P)[0]

    def fwd(X, P):
        B, n = X.shape[0], n_from_packed(P.shape[1], field)
        shapes = [_sds((B, n_eig), X.dtype), _sds((B, n), X.dtype),
                  _sds((B, n, n), _complex(X.dtype) if field == "complex" else X.dtype)]
        y, w, V = _callback(lambda X, P: host_forward(X, P, True), shapes, X, P)
        return y, (X, P, w, V)

    def bwd(res, ybar):
        X, P = res[:2]
        return _callback(host_backward, [_sds(X.shape, X.dtype), _sds(P.shape, P.dtype)], ybar, *res)

    f.defvjp(fwd, bwd)
    return f


def eigenvalue_pmm(X, primaries, *, n_eig: int, which: str = "SA", field: str = "complex", smoothing: float = 0.0,
                   eigh_solver: str = "auto"):
    """AE-PMM y (B, k): the k = n_eig eigenvalues ``which`` picks of M(x_b) = M_0 + Σ_i x_bi M_i (+ s·C).

    X (B, p) float32/float64; primaries packed (p+1, P) or full (p+1, n, n) (module docstring), cast to
    X's dtype. Differentiable in both (reverse mode): Ā_b = V_S diag(ȳ_b) V_Sᴴ.
    """
    checks.choice("field", field, FIELDS)
    checks.choice("which", which, WHICH)
    X = jnp.asarray(X)
    P = _packed("primaries", primaries, field, 1).astype(X.dtype)
    _check_shapes(X, P, n_eig, field, smoothing, eigh_solver)
    return _eigenvalue_fn(int(n_eig), which, field, float(smoothing), eigh_solver)(X, P)


def _check_shapes(X, P, n_eig: int, field: str, smoothing: float, eigh_solver: str):
    checks.choice("eigh_solver", eigh_solver, EIGH_SOLVERS)
    if X.dtype not in (jnp.float32, jnp.float64):
        raise TypeError(f"X must be float32 or float64, got {X.dtype}")
    if X.ndim != 2 or P.shape[0] != X.shape[1] + 1:
        raise ValueError(f"X must be (B, p) and primaries (p + 1, ...); got {X.shape} and {P.shape}")
    n = n_from_packed(P.shape[1], field)
    if not 1 <= n_eig <= n:
        raise ValueError(f"n_eig must be in 1..n = {n}, got {n_eig}")
    if smoothing and field == "real":
        raise ValueError("smoothing needs field='complex': C = i·Σ[M_i, M_j] is imaginary for real M_i")


# --- the observable PMM ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _observable_fn(has_bias: bool, n_eig: int, which: str, form: str, centered: bool, eta: float, field: str,
                   smoothing: float, eigh_solver: str):
    """custom_vjp (X, primaries, secondaries, bias) -> z (B, Q); bias is ignored (zero cotangent) unless has_bias."""
    cfg = dict(n_eig=n_eig, which=which, form=form, centered=centered, eta=eta, field=field, smoothing=smoothing,
               eigh_solver=eigh_solver)

    def host_forward(X, P, S, b, need_grad):
        z, cache = functional.observable_pmm_forward(X, P, S, b if has_bias else None, need_grad=need_grad, **cfg)
        return (z, cache["w"], cache["V"]) if need_grad else (z,)

    def host_backward(zbar, X, P, S, b, w, V):
        _, cache = functional.observable_pmm_forward(X, P, S, b if has_bias else None, eig=(w, V), **cfg)
        g = functional.observable_pmm_backward(cache, zbar)
        return g["X"], g["primaries"], g["secondaries"], g["bias"] if has_bias else np.zeros_like(b)

    @jax.custom_vjp
    def f(X, P, S, b):
        shapes = [_sds((X.shape[0], S.shape[0]), X.dtype)]
        return _callback(lambda *a: host_forward(*a, False), shapes, X, P, S, b)[0]

    def fwd(X, P, S, b):
        B, n = X.shape[0], n_from_packed(P.shape[1], field)
        shapes = [_sds((B, S.shape[0]), X.dtype), _sds((B, n), X.dtype),
                  _sds((B, n, n), _complex(X.dtype) if field == "complex" else X.dtype)]
        z, w, V = _callback(lambda *a: host_forward(*a, True), shapes, X, P, S, b)
        return z, (X, P, S, b, w, V)

    def bwd(res, zbar):
        shapes = [_sds(a.shape, a.dtype) for a in res[:4]]
        return _callback(host_backward, shapes, zbar, *res)

    f.defvjp(fwd, bwd)
    return f


def observable_pmm(X, primaries, secondaries, bias=None, *, n_eig: int, which: str = "LM", form: str = "transition",
                   centered: bool = True, eta: float = 1e-4, field: str = "complex", smoothing: float = 0.0,
                   eigh_solver: str = "auto"):
    """AO-PMM z (B, Q): z_q = b_q + Σ_m (‖V_Sᴴ D_qm V_S‖_F² − ½‖D_qm‖₂²) (form "transition"; "expectation":
    Re tr V_Sᴴ D_qm V_S), V_S the r = n_eig eigenvectors of M(x_b) that ``which`` picks.

    X (B, p); primaries (p+1, P) or (p+1, n, n); secondaries (Q, l, P) or (Q, l, n, n); bias (Q,) or None.
    Differentiable in X and every parameter (pmm_gpu.functional.observable_pmm_backward).
    """
    checks.choice("field", field, FIELDS)
    checks.choice("which", which, WHICH)
    checks.choice("form", form, FORMS)
    X = jnp.asarray(X)
    P = _packed("primaries", primaries, field, 1).astype(X.dtype)
    S = _packed("secondaries", secondaries, field, 2).astype(X.dtype)
    _check_shapes(X, P, n_eig, field, smoothing, eigh_solver)
    if S.shape[2] != P.shape[1]:
        raise ValueError(f"secondaries must be (Q, l, {P.shape[1]}) packed; got {S.shape}")
    b = jnp.zeros(S.shape[0], X.dtype) if bias is None else jnp.asarray(bias, X.dtype)
    if b.shape != (S.shape[0],):
        raise ValueError(f"bias must be ({S.shape[0]},) or None; got {b.shape}")
    fn = _observable_fn(bias is not None, int(n_eig), which, form, bool(centered), float(eta), field,
                        float(smoothing), eigh_solver)
    return fn(X, P, S, b)
