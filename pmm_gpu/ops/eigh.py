"""eigh: eigenpair selection, the reverse mode of the Hermitian eigendecomposition (docs/DESIGN.md §2),
and the chunking of batched library eigensolvers.

Conventions: M (B, n, n) Hermitian, M = V Λ Vᴴ with λ_1 ≤ … ≤ λ_n. For a real loss L and an array A,
the cotangent Ā is defined by dL = Re tr(Āᴴ dA).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import _cuda
from .._xp import array_module

WHICH = ("SA", "LA", "SM", "LM", "EA", "EM", "IA", "IM")
# Chunks of one batched library eigh call (``eigh_max_batch``). cuSOLVER's syevjBatched/heevjBatched
# takes a 32-bit lwork, and its workspace is ~1,050 elements per matrix even at n = 4 (cupy/cupy#7261:
# lwork(B) = 1,028 + 1,049·B at n = 4), not n²: 2²⁰ matrices need 1.1e9 < 2³¹ − 1 (a 2× margin).
EIGH_MAX_BATCH = 2**20
_EIGH_MAX_ELEMENTS = 2**28  # and at most this many matrix elements per call (large n)
LWORK_LIMIT = 2**31 - 1  # lwork is a C int
PROBE_SAMPLES = 4  # matrices per library eigh call whose result ``eigh_probe`` checks


def select_indices(w, k: int, which: str):
    """Indices (B, k) of the k selected eigenvalues of w (B, n) (ascending), ordered by the sort key.

    SA/LA: k smallest/largest λ;  SM/LM: k smallest/largest |λ|;  EA/EM: exterior — the ⌈k/2⌉
    smallest and ⌊k/2⌋ largest by λ / by |λ|;  IA/IM: interior — the k middle ones by λ / by |λ|.
    The result is in ascending order of the sort key (λ for *A, |λ| for *M), as docs/DESIGN.md §1 says.
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


def eigh_vjp(w, V, idx, Vbar_S, eta: float):
    """Cotangent of M from the cotangents of the selected eigenvectors, with Lorentzian broadening.

        Ā = H( V (F_S ∘ (Vᴴ V̄_S)) V_Sᴴ ),   F_is = Δ_is / (Δ_is² + η²),  Δ_is = λ_s − λ_i,  s ∈ S,

    H(X) = (X + Xᴴ)/2, S = idx the selected columns, V_S = V[:, S], F_is = 0 where Δ² + η² = 0.
    Derivation: differentiating M V = V Λ gives Vᴴ dM V = dΛ + Ω Λ − Λ Ω with Ω = Vᴴ dV
    anti-Hermitian, so Ω_ij = (Vᴴ dM V)_ij / (λ_j − λ_i) for i ≠ j and dV = V Ω. Inserting dV into
    dL = Re tr(V̄ᴴ dV) and transposing the linear map gives Ā = H(V (F ∘ (Vᴴ V̄)) Vᴴ) for a full
    V̄ (n, n), F_ij = Δ_ij/(Δ_ij² + η²); the Hermitian part appears because dM is Hermitian. Here V̄
    is zero outside the columns S, so F ∘ (Vᴴ V̄) is too, and V (F ∘ (Vᴴ V̄)) Vᴴ = V (F_S ∘ (Vᴴ V̄_S)) V_Sᴴ:
    O(n² r) per sample instead of O(n³), and no zero-padded (B, n, n) cotangent.
    The diagonal of Ω (the phase gauge) is left free; the losses pmm_gpu builds are phase invariant,
    so the gauge term Im (Vᴴ V̄)_ss contributes nothing and F_ss = 0 drops it. η > 0 replaces 1/Δ by
    Δ/(Δ² + η²): exact for |Δ| ≫ η, bounded by 1/(2η) at (near-)degeneracies, so gradients stay
    finite there (and are biased by O(η²/Δ²) where levels are close). η = 0 is the exact formula
    (pairs with Δ = 0 then get F = 0). Eigenvalue cotangents go through ``eigvals_vjp``; the two
    results add.

    w (B, n), V (B, n, n), idx (B, r) integer, distinct per row, Vbar_S (B, n, r) -> Ā (B, n, n) Hermitian.
    """
    xp = array_module(w)
    # In place where possible: on the CPU every fresh temporary costs its page faults.
    F = xp.take_along_axis(w, idx, axis=1)[:, None, :] - w[:, :, None]  # Δ_is = λ_s − λ_i   (B, n, r)
    den = F * F
    den += eta * eta
    den += den == 0  # Δ = 0 with η = 0 (s itself, exact degeneracies): F = 0 / 1 = 0
    F /= den
    Vh = xp.conj(V.swapaxes(1, 2))  # (B, n, n)
    inner = Vh @ Vbar_S  # (B, n, r)
    inner *= F
    V_Sh = xp.conj(xp.take_along_axis(V, idx[:, None, :], axis=2).swapaxes(1, 2))  # (B, r, n)
    A = (V @ inner) @ V_Sh  # V inner V_Sᴴ   (B, n, n)
    A += xp.conj(A.swapaxes(1, 2), out=Vh)  # Aᴴ into Vh's buffer, no longer needed
    A *= 0.5
    return A


def eigh_max_batch(n: int, lwork: tuple[int, int] | None = None) -> int:
    """Matrices per batched library eigh call for n×n matrices:

        min(EIGH_MAX_BATCH, 2²⁸ / n²,  ((2³¹ − 1)/2 − a) / b)   with lwork(B) = a + b·B elements,

    the last term only when cuSOLVER's own workspace query is at hand (``cusolver_lwork``): half the
    32-bit limit, a 2× margin over the measured linear growth."""
    step = min(EIGH_MAX_BATCH, max(1, _EIGH_MAX_ELEMENTS // (n * n)))
    if lwork is not None:
        fixed, per_matrix = lwork
        step = min(step, max(1, (LWORK_LIMIT // 2 - fixed) // max(per_matrix, 1)))
    return step


def eigh_chunked(eigh, M, xp, max_batch: int | None = None):
    """Apply ``eigh`` (returning an array or a tuple of arrays) to M (B, n, n) in batch chunks of at
    most ``max_batch`` (default ``eigh_max_batch(n)``) matrices, so the solver's 32-bit workspace fits."""
    B, n = M.shape[0], M.shape[1]
    step = max_batch or eigh_max_batch(n)
    if B <= step:
        return eigh(M)
    return concat_batches([eigh(M[s:s + step]) for s in range(0, B, step)], xp)


@functools.lru_cache(maxsize=None)
def cusolver_lwork(n: int, dtype_char: str, device_id: int = 0) -> tuple[int, int] | None:
    """(a, b) of cuSOLVER's syevjBatched/heevjBatched workspace lwork(B) = a + b·B elements for n×n
    matrices of ``dtype_char`` (f, d, F, D), from its bufferSize query at B = 2¹⁰ and 2¹¹ (linear
    there, cupy/cupy#7261); None where the query is unavailable (no CuPy or GPU, another CuPy API).
    """
    try:
        import cupy
        from cupy.cuda import cusolver

        query = getattr(cusolver, {"f": "ssyevj", "d": "dsyevj", "F": "cheevj", "D": "zheevj"}[dtype_char]
                        + "Batched_bufferSize")
        with cupy.cuda.Device(device_id):
            handle = cupy.cuda.device.get_cusolver_handle()
            a, w = cupy.empty((1, n, n), dtype_char), cupy.empty((1, n), dtype_char.lower())
            params = cusolver.createSyevjInfo()
            try:  # jobz 1 = CUSOLVER_EIG_MODE_VECTOR, uplo 0 = CUBLAS_FILL_MODE_LOWER
                l1, l2 = (int(query(handle, 1, 0, n, a.data.ptr, n, w.data.ptr, params, b)) for b in (1024, 2048))
            finally:
                cusolver.destroySyevjInfo(params)
    except Exception:  # noqa: BLE001 -- any failure: fall back to the fixed bound
        return None
    per_matrix = -(-(l2 - l1) // 1024)
    return max(0, l1 - 1024 * per_matrix), per_matrix


def eigh_probe(M, w, V=None, samples: int | None = PROBE_SAMPLES, tol: float | None = None):
    """Number of probed matrices whose library decomposition is wrong, a 0-d device integer (no sync).

    Probed: at most ``samples`` matrices b evenly spread over the batch (a strided slice from b = 0,
    no host-to-device index copy; None: all).
    With eigenvectors V (B, n, n), for s = max_ij |M_b,ij| (1 where M_b = 0),

        e_b = max( max_ij |(V_bᴴ V_b − I)_ij|,  max_ij |(M_b V_b − V_b diag(w_b))_ij| / s ),

    else (eigenvalues only) the trace identity e_b = |Σ_i w_bi − tr M_b| / (n s). Bad: e_b > tol (also
    NaN), tol = 1e3·n·eps of the precision by default (a correct result is ~n·eps; the failures this
    catches, cuSOLVER's non-orthonormal batched eigenvectors at n > 32 (pytorch/pytorch#192483) or a
    missed convergence, are O(1)). M (B, n, n), w (B, n) ascending.
    """
    xp = array_module(M)
    B, n = M.shape[0], M.shape[-1]
    if B == 0:
        return xp.zeros((), np.int64)
    tol = 1e3 * n * float(np.finfo(M.dtype).eps) if tol is None else tol
    if samples is not None and samples < B:
        pick = slice(None, None, -(-B // max(samples, 1)))  # every ⌈B/samples⌉-th matrix from the first
        M, w, V = M[pick], w[pick], (None if V is None else V[pick])
    scale = xp.abs(M).max(axis=(1, 2))
    scale = xp.where(scale > 0, scale, 1)
    if V is None:
        err = xp.abs(w.sum(axis=1) - xp.trace(M, axis1=1, axis2=2)) / (n * scale)
    else:
        Vh = xp.conj(V.swapaxes(1, 2))
        ortho = xp.abs(Vh @ V - xp.eye(n, dtype=V.dtype)).max(axis=(1, 2))
        resid = xp.abs(M @ V - V * w[:, None, :]).max(axis=(1, 2)) / scale
        err = xp.maximum(ortho, resid)
    return (~(err <= tol)).sum()


def concat_batches(parts, xp):
    """Join per-chunk results of a batched solver along the batch axis: arrays, or tuples of arrays."""
    if isinstance(parts[0], tuple):
        return tuple(xp.concatenate(p) for p in zip(*parts))
    return xp.concatenate(parts)


def eigh_vjp_cuda(w, V, idx, Vbar_S, eta: float):
    """RawKernel version of eigh_vjp (kernels/eigen_vjp.cu), same arguments and result.

    One block per sample forms Ā with V, G = F_S ∘ (Vᴴ V̄_S) and V G in shared memory tiles;
    n above the largest tile (32) falls back to eigh_vjp's array code (cuBLAS batched matmuls).
    w (B, n) real, V (B, n, n), idx (B, r) integer, Vbar_S (B, n, r) on the device -> Ā (B, n, n).
    """
    xp = array_module(V)
    B, n, r = V.shape[0], V.shape[-1], idx.shape[1]
    tile = _cuda.tile_for(n)
    if tile is None:
        return eigh_vjp(w, V, idx, Vbar_S, eta)
    real = np.finfo(V.dtype).dtype
    V, Vbar_S = xp.ascontiguousarray(V), xp.ascontiguousarray(Vbar_S, dtype=V.dtype)
    w, idx = xp.ascontiguousarray(w, dtype=real), xp.ascontiguousarray(idx, dtype=np.int64)
    Abar = xp.empty_like(V)
    kernel = _cuda.get_kernel("eigh_vjp", real, V.dtype, tile)
    grid, block = _cuda.block_per_item(B, n * n)
    kernel(grid, block, (w, V, idx, Vbar_S, Abar, B, n, r, float(eta)))
    return Abar


def eigvals_vjp_cuda(V_S, wbar_S):
    """RawKernel version of eigvals_vjp: Ā_ij = Σ_s ȳ_s V_is conj(V_js) in one launch, no temporaries.

    V_S (B, n, k), wbar_S (B, k) real on the device -> Ā (B, n, n).
    """
    xp = array_module(V_S)
    B, n, k = V_S.shape
    real = np.finfo(V_S.dtype).dtype
    V_S = xp.ascontiguousarray(V_S)
    wbar_S = xp.ascontiguousarray(wbar_S, dtype=real)
    Abar = xp.empty((B, n, n), V_S.dtype)
    grid, block = _cuda.grid_for(B * n * n)
    _cuda.get_kernel("eigvals_vjp", real, V_S.dtype)(grid, block, (V_S, wbar_S, Abar, B, n, k))
    return Abar
