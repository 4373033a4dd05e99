"""jacobi: batched eigendecomposition of small Hermitian matrices by a CUDA Jacobi kernel.

``eigh_jacobi_cuda(M)`` is a drop-in for ``xp.linalg.eigh`` on a batch of n×n matrices, n <= 32
(kernels/jacobi.cu: two-sided cyclic Jacobi, round-robin order, one thread block per matrix, the
matrix in shared memory). ``assemble_eigh_jacobi_cuda(x, Pp, n, field)`` fuses the assembly of
M(x) = M_0 + Σ_i x_i M_i from the packed primaries (pmm_gpu/assemble.py contract) into the same
launch, so the (B, n, n) batch never goes through global memory. ``assemble_eigh_observable_jacobi_cuda``
goes one step further for the AO-PMM forward pass: assemble, diagonalise, select and reduce the
observables t = ‖V_Sᴴ D V_S‖_F² or Re tr V_Sᴴ D V_S in one launch, writing only t (B, K).
numpy.linalg.eigh is the oracle.

Eigenvectors are written only as far as the caller needs them: ``k`` and ``which`` choose the columns
in the kernel by ``eigen.select_indices``' rule (default k = n, "SA": all of them, sorted). Both eigh
launchers return (w, V, sweeps):
    w (B, n) real, ascending;  V (B, n, k), V[b, :, s] the eigenvector of w[b, select_indices(w, k,
    which)[b, s]] (k = n, "SA": the numpy.linalg.eigh layout; k = 0: eigenvalues only);
    sweeps (B,) int32: the Jacobi sweeps each matrix needed until off(A) <= tol·‖A‖_F, or −1 when
    ``max_sweeps`` did not suffice (or M held NaN/Inf). ``not_converged(sweeps)`` counts those on
    the device, so a caller can check once per epoch without a host synchronisation per batch.
M is read from its lower triangle, like numpy.linalg.eigh's default UPLO='L'.
"""
from __future__ import annotations

import numpy as np

from .. import _cuda
from .._xp import array_module
from .assemble import FIELDS, packed_size
from .eigh import WHICH  # the kernels' `which` codes are indices into it
from .observable import FORMS  # the kernel's `form` codes likewise

NMAX = 32  # largest n the kernel holds (kernels/jacobi.cu: JACOBI_NMAX)
MAX_THREADS = 256  # largest block (kernels/jacobi.cu: JACOBI_MAX_THREADS)
# Sweep cap. With the rotation threshold (kernels/jacobi.cuh) random matrices need <= 8 sweeps at
# n = 32 and repeated or clustered spectra <= 17 (profiling/results/jacobi-sweeps.md, strict FMA
# emulator, 512 matrices per cell); 30 leaves a 1.8x margin and bounds how long a matrix that never
# converges (NaN input) holds its multiprocessor. Matrices that converge earlier stop on their own.
MAX_SWEEPS = 30


def default_threads(n: int) -> int:
    """Threads per block: one per (pair, column) work item of a round, whole warps, at most 256."""
    return _cuda.threads_for((n + 1) // 2 * n, MAX_THREADS)


def _launch_config(B: int, n: int, threads: int | None):
    threads = threads or default_threads(n)
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be in 1..{MAX_THREADS}, got {threads}")
    return _cuda.block_per_item(B, 0, threads)


def _tol(real, tol):
    return float(np.finfo(real).eps) if tol is None else float(tol)


def _selection(n: int, k, which: str) -> tuple[int, int]:
    k = n if k is None else int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k must be in 0..n = {n}, got {k}")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    return k, WHICH.index(which)


def eigh_jacobi_cuda(M, *, k: int | None = None, which: str = "SA", max_sweeps: int = MAX_SWEEPS,
                     tol: float | None = None, threads: int | None = None):
    """w, V, sweeps of a batch M (B, n, n) of Hermitian matrices, n <= 32, on the device.

    M: float32/float64 (real symmetric) or complex64/complex128 (Hermitian). tol: convergence
    threshold on off(A)/‖A‖_F (default: the machine epsilon of M's precision). threads: block size
    (default ``default_threads(n)``; the CPU-emulation tests use a few). k, which: the eigenvectors
    written, V (B, n, k) (module doc; default all, sorted).
    """
    xp = array_module(M)
    if M.ndim != 3 or M.shape[1] != M.shape[2] or not 1 <= M.shape[1] <= NMAX:
        raise ValueError(f"M must be (B, n, n) with 1 <= n <= {NMAX}; got {M.shape}")
    if np.dtype(M.dtype) not in _cuda.CTYPES:
        raise TypeError(f"M must be float32, float64, complex64 or complex128; got {M.dtype}")
    M = xp.ascontiguousarray(M)
    B, n = M.shape[:2]
    k, code = _selection(n, k, which)
    real = np.finfo(M.dtype).dtype
    w = xp.empty((B, n), dtype=real)
    V = xp.empty((B, n, k), dtype=M.dtype)
    sweeps = xp.empty((B,), dtype=np.int32)
    if B:
        grid, block = _launch_config(B, n, threads)
        _cuda.get_kernel("eigh_jacobi", real, M.dtype)(
            grid, block, (M, w, V, sweeps, B, n, k, code, int(max_sweeps), _tol(real, tol)))
    return w, V, sweeps


def _check_assemble(x, Pp, n: int, field: str):
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
    if not 1 <= n <= NMAX:
        raise ValueError(f"n must be in 1..{NMAX}, got {n}")
    if x.ndim != 2 or Pp.shape != (x.shape[1] + 1, packed_size(n, field)):
        raise ValueError(f"x must be (B, p) and Pp (p + 1, {packed_size(n, field)}); got {x.shape}, {Pp.shape}")
    if x.dtype != Pp.dtype or np.dtype(x.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"x and Pp must both be float32 or both float64; got {x.dtype}, {Pp.dtype}")
    xp = array_module(x)
    real = np.dtype(x.dtype)
    elem = real if field == "real" else np.result_type(real, np.complex64)
    return xp, xp.ascontiguousarray(x), xp.ascontiguousarray(Pp), real, elem


def assemble_eigh_jacobi_cuda(x, Pp, n: int, field: str, *, k: int | None = None, which: str = "SA",
                              max_sweeps: int = MAX_SWEEPS, tol: float | None = None, threads: int | None = None):
    """w, V, sweeps of M(x_b) = assemble_forward(X1 @ Pp) for every row x_b of x, in one launch.

    x (B, p) and Pp (p + 1, P) packed primaries (row 0 is M_0), both float32 or both float64;
    P = packed_size(n, field). Equals ``eigh_jacobi_cuda(assemble_forward(X1 @ Pp, n, field))``
    with X1 = [1, x] up to rounding (the kernel sums the p + 1 terms in order, one entry at a time).
    k, which: the eigenvectors written, V (B, n, k) (module doc; default all, sorted).
    """
    xp, x, Pp, real, elem = _check_assemble(x, Pp, n, field)
    B, p = x.shape
    k, code = _selection(n, k, which)
    w = xp.empty((B, n), dtype=real)
    V = xp.empty((B, n, k), dtype=elem)
    sweeps = xp.empty((B,), dtype=np.int32)
    if B:
        grid, block = _launch_config(B, n, threads)
        _cuda.get_kernel("assemble_eigh_jacobi", real, elem)(
            grid, block, (x, Pp, w, V, sweeps, B, n, p, k, code, int(max_sweeps), _tol(real, tol)))
    return w, V, sweeps


def assemble_eigh_observable_jacobi_cuda(x, Pp, D, n: int, field: str, r: int, which: str, form: str, *,
                                max_sweeps: int = MAX_SWEEPS, tol: float | None = None, threads: int | None = None):
    """t, sweeps: the AO-PMM observables of M(x_b) (as ``assemble_eigh_jacobi_cuda``), in one launch.

    V_S = the r eigenvectors ``eigen.select_indices(w, r, which)`` picks, D (K, n, n) the full Hermitian
    secondaries (assemble_forward of the packed ones; cast to the element type), form "transition" |
    "expectation" -> t (B, K) real = ``observable.observable_forward(V_S, D, form)[0]``, sweeps (B,).
    """
    xp, x, Pp, real, elem = _check_assemble(x, Pp, n, field)
    B, p = x.shape
    r, code = _selection(n, r, which)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if D.ndim != 3 or D.shape[1:] != (n, n):
        raise ValueError(f"D must be (K, {n}, {n}); got {D.shape}")
    D = xp.ascontiguousarray(D, dtype=elem)
    K = D.shape[0]
    t = xp.empty((B, K), dtype=real)
    sweeps = xp.empty((B,), dtype=np.int32)
    if B:
        grid, block = _launch_config(B, n, threads)
        _cuda.get_kernel("assemble_eigh_observable_jacobi", real, elem)(
            grid, block, (x, Pp, D, t, sweeps, B, n, p, K, r, code, FORMS.index(form), int(max_sweeps),
                          _tol(real, tol)))
    return t, sweeps


def not_converged(sweeps):
    """Number of matrices that missed the sweep cap, as a 0-d device array (no host sync)."""
    return (sweeps < 0).sum()
