"""assemble: packed real parameters <-> full Hermitian / real-symmetric matrices, and the smoothing term.

Parameterization (the contract shared with kernels/assemble.cu). For an n×n matrix, P real numbers:

    field "real":    P = n(n+1)/2.  a_t, t over the upper triangle i <= j in row-major order
                     (numpy.triu_indices(n)):  M_ij = M_ji = a_t.
    field "complex": P = n².  the n(n+1)/2 numbers above, then n(n-1)/2 numbers b_u, u over the strict
                     upper triangle i < j in row-major order (numpy.triu_indices(n, 1)):
                     M_ij = a_ij + i b_ij,  M_ji = a_ij − i b_ij.

M(x) = Σ_i x1_i M_i is linear in the parameters, so the model first forms the packed vector
Mp = X1 @ P (one GEMM, X1 = [1, x]) and then ``assemble_forward`` unpacks it into the batch of full
matrices in the C-contiguous (B, n, n) layout the eigensolver consumes.

``assemble_backward`` is the exact adjoint of ``assemble_forward`` under dL = Re tr(Āᴴ dM):

    ∂L/∂a_ii = Re Ā_ii,  ∂L/∂a_ij = Re(Ā_ij + Ā_ji),  ∂L/∂b_ij = Im(Ā_ij − Ā_ji)   (i < j),

which for a Hermitian Ā is (Ā_ii, 2 Re Ā_ij, 2 Im Ā_ij): the projection onto the parameterization.
These are the NumPy references; ``*_cuda`` are the RawKernel launchers for the same contract
(kernels/assemble.cu). ``smoothing_shift`` / ``smoothing_backward`` are the optional term s·C of
docs/DESIGN.md §1 and its reverse mode, in array code on either array module.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import _cuda
from .._xp import array_module

FIELDS = ("real", "complex")


def packed_size(n: int, field: str) -> int:
    """Number of real parameters of one n×n matrix: n(n+1)/2 (real) or n² (complex)."""
    return n * (n + 1) // 2 if field == "real" else n * n


@functools.lru_cache(maxsize=None)
def triu_pairs(n: int):
    """(iu, ju) row-major upper-triangle indices incl. diagonal, and (is_, js) strictly upper."""
    return np.triu_indices(n), np.triu_indices(n, 1)


@functools.lru_cache(maxsize=None)
def _flat_maps(n: int, field: str):
    """Flat index maps between the packed vector and the row-major n² entries of the full matrix.

    Forward (gather, one entry of M per output element): Re M_ij = Mp[re_idx], Im M_ij = im_sign · Mp[im_idx]
    (im_sign 0 on the diagonal and for field "real", ±1 above/below it). Backward: the flat positions
    of (i, j) and (j, i) over the upper triangle (up, lo) and the strict upper triangle (sup, slo),
    and the weight ½ on the diagonal. NumPy arrays; ``_maps`` moves them to the inputs' array module.
    """
    (iu, ju), (is_, js) = triu_pairs(n)
    T = len(iu)
    re_idx = np.zeros((n, n), np.intp)
    re_idx[iu, ju] = re_idx[ju, iu] = np.arange(T)
    im_idx = np.zeros((n, n), np.intp)
    im_sign = np.zeros((n, n))
    if field == "complex":
        im_idx[is_, js] = im_idx[js, is_] = T + np.arange(len(is_))
        im_sign[is_, js], im_sign[js, is_] = 1.0, -1.0
    return {"re_idx": re_idx.ravel(), "im_idx": im_idx.ravel(), "im_sign": im_sign.ravel(),
            "up": iu * n + ju, "lo": ju * n + iu, "sup": is_ * n + js, "slo": js * n + is_,
            "half_diag": np.where(iu == ju, 0.5, 1.0)}


def _maps(n: int, field: str, xp, dtype):
    maps = _flat_maps(n, field)
    if xp is np:
        return maps
    return _device_maps(n, field, xp, np.dtype(dtype))


@functools.lru_cache(maxsize=None)
def _device_maps(n: int, field: str, xp, dtype):
    return {k: xp.asarray(v, dtype=dtype if v.dtype.kind == "f" else None) for k, v in _flat_maps(n, field).items()}


def assemble_forward(Mp, n: int, field: str):
    """Unpack Mp (B, P) real into M (B, n, n), real-symmetric or complex-Hermitian.

    A gather per output element (``_flat_maps``): one ``take`` for the real parts, one for the
    imaginary parts, written straight into the complex result; no scatter through 2-D fancy indices.
    """
    xp = array_module(Mp)
    B = Mp.shape[0]
    f = _maps(n, field, xp, Mp.dtype)
    re = xp.take(Mp, f["re_idx"], axis=1)  # (B, n²)
    if field == "real":
        return re.reshape(B, n, n)
    M = xp.empty((B, n * n), dtype=np.result_type(Mp.dtype, np.complex64))
    M.real[...] = re
    M.imag[...] = xp.take(Mp, f["im_idx"], axis=1) * f["im_sign"].astype(Mp.dtype, copy=False)
    return M.reshape(B, n, n)


def assemble_backward(Abar, n: int, field: str):
    """Adjoint of assemble_forward: Ā (B, n, n) -> packed cotangent (B, P) real (see module doc).

    Gathers on the flat (B, n²) view: sym = ½^[i=j] Re(Ā_ij + Ā_ji) over i <= j, anti = Im(Ā_ij − Ā_ji)
    over i < j; real arithmetic only.
    """
    xp = array_module(Abar)
    B = Abar.shape[0]
    A = Abar.reshape(B, n * n)  # (B, n²)
    Ar = A.real
    f = _maps(n, field, xp, Ar.dtype)
    sym = xp.take(Ar, f["up"], axis=1)
    sym += xp.take(Ar, f["lo"], axis=1)
    sym *= f["half_diag"].astype(Ar.dtype, copy=False)  # the diagonal appears once in M, not twice
    if field == "real":
        return sym
    if not xp.iscomplexobj(A):
        return xp.concatenate([sym, xp.zeros((B, n * (n - 1) // 2), dtype=sym.dtype)], axis=1)
    Ai = A.imag
    anti = xp.take(Ai, f["sup"], axis=1)
    anti -= xp.take(Ai, f["slo"], axis=1)
    return xp.concatenate([sym, anti], axis=1)


def hermitian_pack(M, field: str):
    """Inverse of assemble_forward: M (..., n, n) Hermitian/symmetric -> packed (..., P) real
    (the upper triangle's real parts, then for the complex field its strict upper imaginary parts)."""
    xp = array_module(M)
    n = M.shape[-1]
    (iu, ju), (is_, js) = triu_pairs(n)
    a = M[..., iu, ju].real
    if field == "real":
        return xp.ascontiguousarray(a)
    return xp.concatenate([a, M[..., is_, js].imag], axis=-1)


def n_from_packed(P: int, field: str) -> int:
    """The matrix size n whose packed size (``packed_size``) is P; ValueError when there is none."""
    n = int(round(((8 * P + 1) ** 0.5 - 1) / 2)) if field == "real" else int(round(P**0.5))
    if n < 1 or packed_size(n, field) != P:
        raise ValueError(f"{P} packed parameters do not form a {field} matrix (n(n+1)/2 real, n² complex)")
    return n


def smoothing_shift(Ms, s: float):
    """The smoothing term s·C added to every M(x), made exactly Hermitian: s·(C + Cᴴ)/2, with

        C = i Σ_{i>j} [M_i, M_j] = i Σ_i [M_i, S_i],   S_i = Σ_{j<i} M_j (prefix sums; i, j over 0..p).

    Ms (p+1, n, n) the full primaries (``assemble_forward`` of the packed ones) -> (n, n) complex.
    """
    xp = array_module(Ms)
    S = xp.cumsum(Ms, axis=0) - Ms
    C = 1j * (Ms @ S - S @ Ms).sum(axis=0)
    return (0.5 * s) * (C + xp.conj(C.T))


def smoothing_backward(Ms, s: float, G):
    """Cotangent of the full primaries through s·C, given G = Σ_b Ā_b (the batch-summed Ā (n, n)):

        M̄_k = i s [Σ_{j<k} M_j − Σ_{j>k} M_j, G]   (Hermitian, since G and the M_j are),

    from dC = i Σ_k [dM_k, S_k] + i Σ_k [M_k, Σ_{j<k} dM_j]. Ms (p+1, n, n) -> M̄ (p+1, n, n); the caller
    projects it onto the parameters with ``assemble_backward``.
    """
    xp = array_module(Ms)
    below = xp.cumsum(Ms, axis=0) - Ms
    above = Ms.sum(axis=0) - below - Ms
    D = below - above
    return (1j * s) * (D @ G - G @ D)


def assemble_forward_cuda(Mp, n: int, field: str):
    """RawKernel version of assemble_forward (kernels/assemble.cu): Mp (B, P) float32/float64 on the
    device -> M (B, n, n), real (field "real") or complex64/complex128 (field "complex")."""
    xp = array_module(Mp)
    if Mp.ndim != 2 or Mp.shape[1] != packed_size(n, field):
        raise ValueError(f"Mp must be (B, {packed_size(n, field)}) for n={n}, field={field!r}; got {Mp.shape}")
    Mp = xp.ascontiguousarray(Mp)
    B = Mp.shape[0]
    dtype = Mp.dtype if field == "real" else np.result_type(Mp.dtype, np.complex64)
    M = xp.empty((B, n, n), dtype=dtype)
    grid, block = _cuda.grid_for(B * n * n)
    _cuda.get_kernel("assemble_forward", Mp.dtype, M.dtype)(grid, block, (Mp, M, B, n))
    return M


def assemble_backward_cuda(Abar, n: int, field: str):
    """RawKernel version of assemble_backward: Ā (B, n, n) on the device -> (B, P) real cotangent."""
    xp = array_module(Abar)
    if Abar.ndim != 3 or Abar.shape[1:] != (n, n):
        raise ValueError(f"Abar must be (B, {n}, {n}); got {Abar.shape}")
    # The kernel reads Ā in the field's element type; a mismatched Ā contributes only that part.
    is_complex = xp.iscomplexobj(Abar)
    if field == "real" and is_complex:
        Abar = Abar.real
    elif field == "complex" and not is_complex:
        Abar = Abar.astype(np.result_type(Abar.dtype, np.complex64))
    Abar = xp.ascontiguousarray(Abar)
    B = Abar.shape[0]
    grad = xp.empty((B, packed_size(n, field)), dtype=np.finfo(Abar.dtype).dtype)
    grid, block = _cuda.grid_for(grad.size)
    _cuda.get_kernel("assemble_backward", grad.dtype, Abar.dtype)(grid, block, (Abar, grad, B, n))
    return grad
