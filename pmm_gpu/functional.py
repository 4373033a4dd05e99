"""The functional core: both PMM types as pure functions of (X, parameters), and their reverse mode.

    M(x) = M_0 + Σ_i x_i M_i (+ s·C)                 M(x) = V Λ Vᴴ,  S = the eigenpairs ``which`` picks
    eigenvalue PMM:   y = (λ_s)_{s∈S}                                              (B, k)
    observable PMM:   z_q = b_q + Σ_m ( ‖V_Sᴴ D_qm V_S‖_F² − ½‖D_qm‖₂² )   transition  (B, Q)
                      z_q = b_q + Σ_m ( Re tr V_Sᴴ D_qm V_S − ½‖D_qm‖₂² )  expectation

(docs/DESIGN.md §1–2). ``*_forward(X, params..., **config)`` returns (outputs, cache); ``*_backward(cache,
cotangent)`` returns the cotangents of X and of every parameter, with dL = Σ ȳ·dy. The parameters are
packed real arrays (ops/assemble.py): primaries (p+1, P), secondaries (Q, l, P), bias (Q,), P =
n² (field "complex") or n(n+1)/2 ("real"). Arrays are NumPy or CuPy; the backend that owns X
(``backend.backend_of``) runs them unless ``backend`` is given. Nothing here holds state: the model
classes (pmm_gpu/models/) and the PyTorch/JAX bindings are thin wrappers over these four functions.
``primaries_forward`` / ``primaries_backward`` map other primary parameterisations onto the packed
(p+1, P) primaries and back: low rank M_i = U_i diag(l_i) U_iᴴ (ops/lowrank.py) and no M_0.

Reverse mode in one line each: the eigenvalue cotangent gives Ā = V_S diag(ȳ) V_Sᴴ (ops/eigh.py
``eigvals_vjp``), the observables give V̄_S and D̄ (ops/observable.py), V̄_S gives Ā (``eigh_vjp``, with
Lorentzian broadening η), and Ā goes to the parameters and the inputs (``backend.assemble_vjp``):

    primaries:  M̄ = assemble_backward(Σ_b x1_b Ā_b)  (+ the smoothing term's cotangent of Σ_b Ā_b)   X1 = [1, X]
    inputs:     X̄_bi = Re tr(Ā_bᴴ M_i),  i = 1..p     (C does not depend on x)
"""
from __future__ import annotations

from ._xp import array_module, nvtx_range
from .backend import backend_of
from .ops.assemble import n_from_packed, smoothing_backward, smoothing_shift
from .ops.eigh import select, select_indices
from .ops.lowrank import lowrank_backward, lowrank_forward
from .ops.observable import spectral_norm_forward


def _primaries_setup(X, primaries, field, smoothing, backend):
    """backend, n, and the smoothing shift s·C (None without smoothing) with the full primaries."""
    if X.ndim != 2 or primaries.ndim != 2 or primaries.shape[0] != X.shape[1] + 1:
        raise ValueError(f"X must be (B, p) and primaries (p + 1, P); got {X.shape} and {primaries.shape}")
    be = backend or backend_of(X)
    n = n_from_packed(primaries.shape[1], field)
    Ms = be.ops.assemble_forward(primaries, n, field) if smoothing else None  # (p+1, n, n)
    return be, n, Ms, (smoothing_shift(Ms, smoothing) if smoothing else None)


def _assemble_backward(cache, Abar, input_grad: bool) -> dict:
    """Ā (B, n, n) -> {"primaries": M̄ (p+1, P), "X": X̄ (B, p)} (``backend.assemble_vjp``), plus the
    smoothing term's cotangent of Σ_b Ā_b."""
    be, n, field = cache["backend"], cache["n"], cache["field"]
    Pbar, Xbar = be.assemble_vjp(cache["X"], cache["primaries"], Abar, n, field, input_grad)
    grads = {"primaries": Pbar}
    if cache["smoothing"]:
        grads["primaries"] += be.ops.assemble_backward(
            smoothing_backward(cache["Ms"], cache["smoothing"], Abar.sum(axis=0)), n, field)
    if input_grad:
        grads["X"] = Xbar
    return grads


def primaries_forward(params: dict, *, field: str = "complex", constant: bool = True):
    """The packed full primaries (p+1, P) the PMM forwards take, from a model's primary parameters,
    and the cache for ``primaries_backward``:

        {"primaries": (m, P)}                                   full matrices, packed (ops/assemble.py)
        {"primaries_l": (m, r), "primaries_u": (m, n, r[, 2])}  M_i = U_i diag(l_i) U_iᴴ (ops/lowrank.py)

    m = p + 1 (M_0, M_1..M_p), or m = p with constant=False: no M_0 (pyPMM's bias_term=False), a zero
    row is put in its place, so M(x) = Σ_i x_i M_i. Full primaries with M_0 pass through unchanged.
    """
    if "primaries_l" in params:
        packed = lowrank_forward(params["primaries_l"], params["primaries_u"], field)
    else:
        packed = params["primaries"]
    if not constant:
        xp = array_module(packed)
        packed = xp.concatenate([xp.zeros_like(packed[:1]), packed], axis=0)
    return packed, dict(params={k: params[k] for k in params if k.startswith("primaries")}, field=field,
                        constant=constant)


def primaries_backward(cache, Pbar) -> dict:
    """Cotangents of the primary parameters of ``primaries_forward`` from P̄ (p+1, P), the cotangent
    of the packed full primaries: the M_0 row dropped with constant=False, then for low rank
    ``lowrank_backward`` (Ū = 2 M̄ U diag(l), l̄ = Re diag(Uᴴ M̄ U))."""
    if not cache["constant"]:
        Pbar = Pbar[1:]
    params = cache["params"]
    if "primaries_l" not in params:
        return {"primaries": Pbar}
    lbar, ubar = lowrank_backward(params["primaries_l"], params["primaries_u"], Pbar, cache["field"])
    return {"primaries_l": lbar, "primaries_u": ubar}


def eigenvalue_pmm_forward(X, primaries, *, n_eig: int, which: str = "SA", field: str = "complex",
                           smoothing: float = 0.0, eigh_solver: str = "auto", need_grad: bool = True,
                           backend=None, eigh_failures=None, eig=None):
    """AE-PMM outputs y (B, k) = the k = n_eig eigenvalues ``which`` picks of M(x_b), and the cache for
    ``eigenvalue_pmm_backward`` (None with need_grad=False: eigenvalues only, no eigenvectors computed).

    X (B, p), primaries (p+1, P) packed. eigh_solver: the CUDA eigensolver (backend.EIGH_SOLVERS);
    eigh_failures: optional 0-d device counter of matrices the solver reports as not converged.
    eig: optional (w (B, n), V (B, n, n)), the eigendecomposition of M(x) that an earlier call's cache
    holds (cache["w"], cache["V"]); the solve is skipped (the PyTorch/JAX bindings rebuild the cache
    for the backward from it).
    """
    be, n, Ms, shift = _primaries_setup(X, primaries, field, smoothing, backend)
    solve = dict(shift=shift, solver=eigh_solver, failures=eigh_failures)
    if not need_grad:  # inference: eigenvalues only (the Jacobi kernel then writes no eigenvector)
        w, _ = be.assemble_eigh(X, primaries, n, field, k=0, which=which, **solve)
        return be.xp.take_along_axis(w, select_indices(w, n_eig, which), axis=1), None
    w, V = eig if eig is not None else be.assemble_eigh(X, primaries, n, field, **solve)
    w_S, V_S = select(w, V, select_indices(w, n_eig, which))
    cache = dict(backend=be, n=n, field=field, X=X, primaries=primaries, smoothing=smoothing, Ms=Ms, w=w, V=V, V_S=V_S)
    return w_S, cache


def eigenvalue_pmm_backward(cache, ybar, *, input_grad: bool = True) -> dict:
    """Cotangents {"primaries": (p+1, P), "X": (B, p)} from ȳ = ∂L/∂y (B, k):
    Ā = V_S diag(ȳ) V_Sᴴ, then ``_assemble_backward``. input_grad=False skips X̄ (one GEMM)."""
    with nvtx_range("backward"):
        return _assemble_backward(cache, cache["backend"].ops.eigvals_vjp(cache["V_S"], ybar), input_grad)


def observable_pmm_forward(X, primaries, secondaries, bias=None, *, n_eig: int, which: str = "LM",
                           form: str = "transition", centered: bool = True, eta: float = 1e-4,
                           field: str = "complex", smoothing: float = 0.0, eigh_solver: str = "auto",
                           need_grad: bool = True, backend=None, eigh_failures=None, eig=None):
    """AO-PMM outputs z (B, Q) (module docstring) and the cache for ``observable_pmm_backward``.

    X (B, p), primaries (p+1, P), secondaries (Q, l, P) packed, bias (Q,) or None; r = n_eig selected
    eigenvectors; centered: subtract ½‖D_qm‖₂²; eta: the broadening of ``eigh_vjp`` (backward only).
    With need_grad=False the cache is None and, where the backend has one, a fused launch computes
    the observables without writing eigenvectors. eig: as for ``eigenvalue_pmm_forward``.
    """
    be, n, Ms, shift = _primaries_setup(X, primaries, field, smoothing, backend)
    Qn, l, P = secondaries.shape
    D = be.ops.assemble_forward(secondaries.reshape(Qn * l, P), n, field)  # (K, n, n), K = Q·l
    solve = dict(shift=shift, solver=eigh_solver, failures=eigh_failures)
    cache = None
    if need_grad:
        w, V = eig if eig is not None else be.assemble_eigh(X, primaries, n, field, **solve)  # (B, n), (B, n, n)
        idx = select_indices(w, n_eig, which)  # (B, r)
        V_S = select(w, V, idx)[1]  # (B, n, r)
    with nvtx_range("observable"):
        if need_grad:
            t, DV, Q = be.ops.observable_forward(V_S, D, form)  # (B, K), (B, K, n, r), (B, K, r, r)
        else:
            t = be.assemble_eigh_observable(X, primaries, D, n, field, n_eig, which, form, **solve)
        z = t.reshape(-1, Qn, l).sum(axis=2)  # (B, Q)
        G = None
        if centered:
            c, G = spectral_norm_forward(D, lambda M: be.eigh(M, eigh_solver, eigh_failures))  # (K,), (K, n, n)
            z = z - c.reshape(Qn, l).sum(axis=1)
        if bias is not None:
            z = z + bias
        z = be.xp.ascontiguousarray(z.astype(primaries.dtype, copy=False))
    if need_grad:
        cache = dict(backend=be, n=n, field=field, X=X, primaries=primaries, smoothing=smoothing, Ms=Ms, w=w, V=V,
                     idx=idx, V_S=V_S, DV=DV, Q=Q, G=G, form=form, eta=eta, secondaries_shape=secondaries.shape,
                     bias=bias is not None)
    return z, cache


def observable_pmm_backward(cache, zbar, *, input_grad: bool = True) -> dict:
    """Cotangents {"primaries", "secondaries" (Q, l, P), "bias" (Q,) if any, "X" (B, p)} from
    z̄ = ∂L/∂z (B, Q): ∂z_q/∂t_qm = 1, ∂z_q/∂c_qm = −1 (c_qm = ½‖D_qm‖₂², gradient G_qm), then
    ``observable_backward``, ``eigh_vjp`` and ``_assemble_backward``."""
    be, n, field = cache["backend"], cache["n"], cache["field"]
    with nvtx_range("backward"):
        tbar = be.xp.repeat(zbar, cache["secondaries_shape"][1], axis=1)  # (B, K)
        Vbar_S, Dbar = be.ops.observable_backward(cache["V_S"], cache["DV"], cache["Q"], tbar, cache["form"])
        if cache["G"] is not None:
            Dbar = Dbar - tbar.sum(axis=0)[:, None, None] * cache["G"]
        grads = {"secondaries": be.ops.assemble_backward(Dbar, n, field).reshape(cache["secondaries_shape"])}
        if cache["bias"]:
            grads["bias"] = zbar.sum(axis=0)
        Abar = be.ops.eigh_vjp(cache["w"], cache["V"], cache["idx"], Vbar_S, cache["eta"])  # (B, n, n)
        return {**grads, **_assemble_backward(cache, Abar, input_grad)}
