"""Eigenpair selection and the reverse mode of the Hermitian eigendecomposition (DESIGN.md §2).

Conventions: M (B, n, n) Hermitian, M = V Λ Vᴴ with λ_1 ≤ … ≤ λ_n. For a real loss L and an array A,
the cotangent Ā is defined by dL = Re tr(Āᴴ dA).
"""
from __future__ import annotations

import numpy as np

from .backend import array_module

WHICH = ("SA", "LA", "SM", "LM", "EA", "EM", "IA", "IM")
# cuSOLVER's batched syevj/heevj takes a 32-bit lwork; stay well below 2**31 elements per call.
_EIGH_MAX_ELEMENTS = 2**28


def select_indices(w, k: int, which: str):
    """Indices (B, k) of the k selected eigenvalues of w (B, n) (ascending), ordered by the sort key.

    SA/LA: k smallest/largest λ;  SM/LM: k smallest/largest |λ|;  EA/EM: exterior — the ⌈k/2⌉
    smallest and ⌊k/2⌋ largest by λ / by |λ|;  IA/IM: interior — the k middle ones by λ / by |λ|.
    The result is in ascending order of the sort key (λ for *A, |λ| for *M), as DESIGN.md §1 says.
    """
    xp = array_module(w)
    B, n = w.shape
    if which.endswith("A"):
        order = xp.broadcast_to(xp.arange(n), (B, n))  # w is already ascending
    else:
        order = xp.argsort(xp.abs(w), axis=1, kind="stable")
    # Column slices, not host index arrays: indexing a CuPy array with a NumPy array copies it to the
    # device on every call (a host-to-device transfer in the training step).
    if which[0] == "E":
        return xp.concatenate([order[:, :(k + 1) // 2], order[:, n - k // 2:]], axis=1)
    start = {"S": 0, "L": n - k, "I": (n - k) // 2}[which[0]]
    return order[:, start:start + k]


def select(w, V, idx):
    """Gather the selected eigenpairs: w (B, n), V (B, n, n), idx (B, k) -> w_S (B, k), V_S (B, n, k)."""
    xp = array_module(w)
    return xp.take_along_axis(w, idx, axis=1), xp.take_along_axis(V, idx[:, None, :], axis=2)


def eigvals_vjp(V_S, wbar_S):
    """Cotangent of M from eigenvalue cotangents: Ā = V_S diag(λ̄_S) V_Sᴴ.

    V_S (B, n, k) selected eigenvectors, wbar_S (B, k) -> Ā (B, n, n). Follows from first-order
    perturbation theory, dλ_s = v_sᴴ dM v_s = Re tr((v_s v_sᴴ)ᴴ dM).
    """
    xp = array_module(V_S)
    return (V_S * wbar_S[:, None, :]) @ xp.conj(V_S.swapaxes(1, 2))


def eigh_vjp(w, V, wbar, Vbar, eta: float):
    """Cotangent of M from eigenvalue and eigenvector cotangents, with Lorentzian broadening.

        Ā = H( V (diag(λ̄) + F ∘ (Vᴴ V̄)) Vᴴ ),   F_ij = Δ_ij / (Δ_ij² + η²),  Δ_ij = λ_j − λ_i,  F_ii = 0,

    H(X) = (X + Xᴴ)/2. Derivation: differentiating M V = V Λ gives Vᴴ dM V = dΛ + Ω Λ − Λ Ω with
    Ω = Vᴴ dV anti-Hermitian, so dΛ = diag(Vᴴ dM V) and Ω_ij = (Vᴴ dM V)_ij / (λ_j − λ_i) for i ≠ j,
    dV = V Ω. Inserting both into dL = Re tr(λ̄ᵀ dΛ) + Re tr(V̄ᴴ dV) and transposing the linear map
    gives the formula above (the Hermitian part appears because dM is Hermitian).
    The diagonal of Ω (the phase gauge) is left free; the losses pmm_gpu builds are phase invariant,
    so the gauge term Im diag(Vᴴ V̄) contributes nothing and F_ii = 0 drops it. η > 0 replaces
    1/Δ by Δ/(Δ² + η²): exact for |Δ| ≫ η, bounded by 1/(2η) at (near-)degeneracies, so gradients
    stay finite there (and are biased by O(η²/Δ²) where levels are close). η = 0 is the exact formula
    (pairs with Δ = 0 then get F = 0).

    w (B, n), V (B, n, n), wbar (B, n) or None, Vbar (B, n, n) -> Ā (B, n, n) Hermitian.
    """
    xp = array_module(w)
    # In place where possible: on the CPU every fresh (B, n, n) temporary costs its page faults.
    F = w[:, None, :] - w[:, :, None]  # Δ_ij = λ_j − λ_i   (B, n, n)
    den = F * F
    den += eta * eta
    den += den == 0  # Δ = 0 with η = 0 (the diagonal, exact degeneracies): F = 0 / 1 = 0
    F /= den
    Vh = xp.conj(V.swapaxes(1, 2))
    inner = Vh @ Vbar  # (B, n, n)
    inner *= F
    if wbar is not None:
        i = xp.arange(w.shape[1])
        inner[:, i, i] += wbar
    A = xp.matmul(V @ inner, Vh, out=inner)  # V inner Vᴴ, written into inner (no longer an input)
    A += xp.conj(A.swapaxes(1, 2), out=Vh)  # Aᴴ into Vh's buffer, no longer needed
    A *= 0.5
    return A


def eigh_chunked(eigh, M, xp, max_batch: int | None = None):
    """Apply ``eigh`` to M (B, n, n) in batch chunks that fit the solver's 32-bit workspace."""
    B, n = M.shape[0], M.shape[1]
    step = max_batch or max(1, _EIGH_MAX_ELEMENTS // (n * n))
    if B <= step:
        return eigh(M)
    w = xp.empty(M.shape[:2], dtype=M.real.dtype)
    V = xp.empty_like(M)
    for s in range(0, B, step):
        w[s:s + step], V[s:s + step] = eigh(M[s:s + step])
    return w, V


def _vjp_block(work: int) -> int:
    """Threads of a one-block-per-item launch: ``work`` entries rounded up to whole warps, at most 256."""
    return min(256, max(32, -(-work // 32) * 32))


def eigh_vjp_cuda(w, V, wbar, Vbar, eta: float):
    """RawKernel version of eigh_vjp (kernels/eigen_vjp.cu), same arguments and result.

    One block per sample forms Ā with V, G = diag(λ̄) + F ∘ (Vᴴ V̄) and V G in shared memory tiles;
    n above the largest tile (32) falls back to eigh_vjp's array code (cuBLAS batched matmuls).
    w (B, n) real, V (B, n, n), wbar (B, n) or None, Vbar (B, n, n) on the device -> Ā (B, n, n).
    """
    from . import _cuda

    xp = array_module(V)
    B, n = V.shape[0], V.shape[-1]
    tile = _cuda.tile_for(n)
    if tile is None:
        return eigh_vjp(w, V, wbar, Vbar, eta)
    real = np.finfo(V.dtype).dtype
    V, Vbar = xp.ascontiguousarray(V), xp.ascontiguousarray(Vbar, dtype=V.dtype)
    w = xp.ascontiguousarray(w, dtype=real)
    wbar = xp.zeros((B, n), real) if wbar is None else xp.ascontiguousarray(wbar, dtype=real)
    Abar = xp.empty_like(V)
    kernel = _cuda.get_kernel("eigh_vjp", real, V.dtype, tile)
    kernel((max(1, min(B, _cuda.MAX_GRID)),), (_vjp_block(n * n),), (w, V, wbar, Vbar, Abar, B, n, float(eta)))
    return Abar


def eigvals_vjp_cuda(V_S, wbar_S):
    """RawKernel version of eigvals_vjp: Ā_ij = Σ_s ȳ_s V_is conj(V_js) in one launch, no temporaries.

    V_S (B, n, k), wbar_S (B, k) real on the device -> Ā (B, n, n).
    """
    from . import _cuda

    xp = array_module(V_S)
    B, n, k = V_S.shape
    real = np.finfo(V_S.dtype).dtype
    V_S = xp.ascontiguousarray(V_S)
    wbar_S = xp.ascontiguousarray(wbar_S, dtype=real)
    Abar = xp.empty((B, n, n), V_S.dtype)
    grid, block = _cuda.grid_for(B * n * n)
    _cuda.get_kernel("eigvals_vjp", real, V_S.dtype)(grid, block, (V_S, wbar_S, Abar, B, n, k))
    return Abar
