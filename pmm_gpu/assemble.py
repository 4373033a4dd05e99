"""assemble: packed real parameters <-> full Hermitian / real-symmetric matrices.

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
These are the NumPy references; ``*_cuda`` are the RawKernel launchers for the same contract.
"""
from __future__ import annotations

import functools

import numpy as np

from .backend import array_module

FIELDS = ("real", "complex")


def packed_size(n: int, field: str) -> int:
    """Number of real parameters of one n×n matrix: n(n+1)/2 (real) or n² (complex)."""
    return n * (n + 1) // 2 if field == "real" else n * n


@functools.lru_cache(maxsize=None)
def triu_pairs(n: int):
    """(iu, ju) row-major upper-triangle indices incl. diagonal, and (is_, js) strictly upper."""
    return np.triu_indices(n), np.triu_indices(n, 1)


def assemble_forward(Mp, n: int, field: str):
    """Unpack Mp (B, P) real into M (B, n, n), real-symmetric or complex-Hermitian."""
    xp = array_module(Mp)
    (iu, ju), (is_, js) = triu_pairs(n)
    B, T = Mp.shape[0], len(iu)
    if field == "real":
        M = xp.empty((B, n, n), dtype=Mp.dtype)
        M[:, iu, ju] = Mp[:, :T]
        M[:, ju, iu] = Mp[:, :T]
        return M
    M = xp.empty((B, n, n), dtype=np.result_type(Mp.dtype, np.complex64))
    M[:, iu, ju] = Mp[:, :T]
    M[:, js, is_] = Mp[:, :T][:, iu != ju]
    M[:, is_, js] += 1j * Mp[:, T:]
    M[:, js, is_] -= 1j * Mp[:, T:]
    return M


def assemble_backward(Abar, n: int, field: str):
    """Adjoint of assemble_forward: Ā (B, n, n) -> packed cotangent (B, P) real (see module doc)."""
    xp = array_module(Abar)
    (iu, ju), (is_, js) = triu_pairs(n)
    sym = Abar[:, iu, ju] + Abar[:, ju, iu]
    sym[:, iu == ju] *= 0.5  # the diagonal appears once in M, not twice
    if field == "real":
        return xp.ascontiguousarray(sym.real)
    anti = (Abar[:, is_, js] - Abar[:, js, is_]).imag
    return xp.concatenate([sym.real, anti], axis=1)


def hermitian_pack(M, field: str):
    """Inverse of assemble_forward: M (..., n, n) Hermitian/symmetric -> packed (..., P) real."""
    xp = array_module(M)
    n = M.shape[-1]
    (iu, ju), (is_, js) = triu_pairs(n)
    a = M[..., iu, ju].real
    if field == "real":
        return xp.ascontiguousarray(a)
    return xp.concatenate([a, M[..., is_, js].imag], axis=-1)



def assemble_forward_cuda(Mp, n: int, field: str):
    """RawKernel version of assemble_forward (kernels/assemble.cu): Mp (B, P) float32/float64 on the
    device -> M (B, n, n), real (field "real") or complex64/complex128 (field "complex")."""
    from . import _cuda

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
    from . import _cuda

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
