"""observable: the AO-PMM observables of selected eigenvectors and their reverse mode.

    Q_k = V_Sᴴ D_k V_S  (r × r, one per secondary k = (q, m))
    transition:  t_k = ‖Q_k‖_F²  (= Σ_{i,j∈S} |v_iᴴ D_k v_j|²)        expectation:  t_k = Re tr Q_k

and the centering term c_k = ½‖D_k‖₂² (docs/DESIGN.md §1). All math is array code on NumPy or CuPy,
batched over samples and over the K secondaries with matmul; no loop over pairs (i, j) or samples.
``*_cuda`` are the RawKernel launchers of kernels/observable.cu, same arguments and results.
"""
from __future__ import annotations

import numpy as np

from .. import _cuda
from .._xp import array_module

FORMS = ("transition", "expectation")


def observable_forward(V_S, D, form: str):
    """Uncentered, unbiased observables t_k = ‖Q_k‖_F² (transition) or Re tr Q_k (expectation).

    V_S (B, n, r) selected eigenvectors, D (K, n, n) Hermitian secondaries ->
    t (B, K) real, DV (B, K, n, r) = D_k V_S, Q (B, K, r, r) = V_Sᴴ D_k V_S (DV and Q feed the backward).
    D_k V_S for every k is one matmul (K·n, n) @ (B, n, r); Q is a batched (r, n) @ (n, r) matmul.
    """
    xp = array_module(V_S)
    B, n, r = V_S.shape
    K = D.shape[0]
    DV = (D.reshape(K * n, n) @ V_S).reshape(B, K, n, r)  # (B, K, n, r)
    Q = xp.conj(V_S.swapaxes(1, 2))[:, None] @ DV  # (B, K, r, r)
    if form == "transition":
        t = (Q * xp.conj(Q)).real.sum(axis=(2, 3))
    else:
        t = xp.diagonal(Q, axis1=2, axis2=3).real.sum(axis=2)
    return t, DV, Q


def observable_backward(V_S, DV, Q, tbar, form: str):
    """Cotangents of V_S and of D from tbar = ∂L/∂t (B, K), for t of ``observable_forward``.

    With dL = Re tr(Q̄ᴴ dQ) and dQ = dV_Sᴴ D V_S + V_Sᴴ dD V_S + V_Sᴴ D dV_S (D Hermitian):
        V̄_S = Σ_k D_k V_S (Q̄_k + Q̄_kᴴ),     D̄_k = Σ_b V_S Q̄_bk V_Sᴴ,
    transition: Q̄ = 2 t̄ Q (d‖Q‖_F² = 2 Re tr(Qᴴ dQ)), Q Hermitian, so V̄_S = Σ_k 4 t̄_k D_k V_S Q_k;
    expectation: Q̄ = t̄ I, so V̄_S = Σ_k 2 t̄_k D_k V_S and D̄_k = Σ_b t̄_bk V_S V_Sᴴ.

    V_S (B, n, r), DV (B, K, n, r), Q (B, K, r, r), tbar (B, K) -> V̄_S (B, n, r), D̄ (K, n, n).
    """
    B, n, r = V_S.shape
    K = DV.shape[1]
    Vh = array_module(V_S).conj(V_S.swapaxes(1, 2))  # (B, r, n)
    if form == "transition":
        Qbar = (2 * tbar)[:, :, None, None] * Q  # (B, K, r, r)
        # Σ_k DV_k (2 Q̄_k): contract (k, r) in one batched matmul (B, n, K·r) @ (B, K·r, r)
        Vbar_S = DV.transpose(0, 2, 1, 3).reshape(B, n, K * r) @ (2 * Qbar).reshape(B, K * r, r)
        W = V_S[:, None] @ Qbar  # (B, K, n, r): V_S Q̄_bk
        # Σ_b W_bk V_Sbᴴ: contract (b, r) as one GEMM (K·n, B·r) @ (B·r, n)
        Dbar = (W.transpose(1, 2, 0, 3).reshape(K * n, B * r) @ Vh.reshape(B * r, n)).reshape(K, n, n)
    else:
        Vbar_S = ((2 * tbar)[:, :, None, None] * DV).sum(axis=1)
        proj = (V_S @ Vh).reshape(B, n * n)  # projectors V_S V_Sᴴ, (B, n²)
        Dbar = (tbar.T.astype(proj.dtype) @ proj).reshape(K, n, n)  # one GEMM (K, B) @ (B, n²)
    return Vbar_S, Dbar


def spectral_norm_forward(D, eigh):
    """c_k = ½‖D_k‖₂² and its gradient G_k = ∂c_k/∂D_k = μ_k u_k u_kᴴ.

    μ_k is the eigenvalue of D_k with the largest |μ|, u_k its eigenvector: ‖D‖₂ = |μ| and
    d|μ| = sign(μ) uᴴ dD u, so d(½μ²) = μ uᴴ dD u = Re tr((μ u uᴴ)ᴴ dD). Not differentiable where
    the top |μ| is degenerate (e.g. μ and −μ); there one of the eigenvectors is used.
    D (K, n, n), eigh the backend's batched eigensolver -> c (K,), G (K, n, n).
    """
    xp = array_module(D)
    mu, U = eigh(D)  # K small matrices per step
    top = xp.argmax(xp.abs(mu), axis=1)
    k = xp.arange(D.shape[0])
    m, u = mu[k, top], U[k, :, top]  # (K,), (K, n)
    G = m[:, None, None] * (u[:, :, None] * xp.conj(u[:, None, :]))
    return 0.5 * m * m, G


def observable_forward_cuda(V_S, D, form: str):
    """RawKernel version of observable_forward (kernels/observable.cu): same arguments and results.

    One block per (sample, secondary) forms D_k V_S and Q_k in shared memory and reduces t; n above
    the largest tile (32) falls back to the array code.
    V_S (B, n, r), D (K, n, n) on the device -> t (B, K), DV (B, K, n, r), Q (B, K, r, r).
    """
    xp = array_module(V_S)
    B, n, r = V_S.shape
    K = D.shape[0]
    tile = _cuda.tile_for(n)
    if tile is None:
        return observable_forward(V_S, D, form)
    V_S, D = xp.ascontiguousarray(V_S), xp.ascontiguousarray(D, dtype=V_S.dtype)
    real = np.finfo(V_S.dtype).dtype
    t = xp.empty((B, K), real)
    DV = xp.empty((B, K, n, r), V_S.dtype)
    Q = xp.empty((B, K, r, r), V_S.dtype)
    grid, block = _cuda.block_per_item(B * K, max(n * r, r * r))
    kernel = _cuda.get_kernel("observable_forward", real, V_S.dtype, tile)
    kernel(grid, block, (V_S, D, t, DV, Q, B, K, n, r, FORMS.index(form)))
    return t, DV, Q


def observable_backward_cuda(V_S, DV, Q, tbar, form: str):
    """RawKernel version of observable_backward: same arguments and results.

    One launch gives V̄_S and, for the transition form, W_bk = V_S Q̄_bk written in the (K, n, B, r)
    layout of the D̄ GEMM; D̄ = Σ_b (W_bk or t̄_bk V_S) V_Sᴴ is then one cuBLAS GEMM, as in the reference.
    """
    xp = array_module(V_S)
    B, n, r = V_S.shape
    K = DV.shape[1]
    real = np.finfo(V_S.dtype).dtype
    V_S, DV, Q = (xp.ascontiguousarray(a, dtype=V_S.dtype) for a in (V_S, DV, Q))
    tbar = xp.ascontiguousarray(tbar, dtype=real)
    Vbar_S = xp.empty_like(V_S)
    W = xp.empty((K, n, B, r) if form == "transition" else (1,), V_S.dtype)
    grid, block = _cuda.grid_for(B * n * r)
    _cuda.get_kernel("observable_backward", real, V_S.dtype)(
        grid, block, (V_S, DV, Q, tbar, Vbar_S, W, B, K, n, r, FORMS.index(form)))
    Vh = xp.conj(V_S.swapaxes(1, 2))  # (B, r, n)
    if form == "transition":
        Dbar = (W.reshape(K * n, B * r) @ Vh.reshape(B * r, n)).reshape(K, n, n)  # (K·n, B·r) @ (B·r, n)
    else:
        Dbar = (tbar.T.astype(V_S.dtype) @ (V_S @ Vh).reshape(B, n * n)).reshape(K, n, n)  # (K, B) @ (B, n²)
    return Vbar_S, Dbar
