"""The one place where NumPy and CuPy differ.

A backend bundles the array module (``xp``), host/device transfers, the eigensolvers and ``ops``: the
table of the ops that have a CUDA kernel, bound to the NumPy references (``NUMPY_OPS``) or to the
RawKernel launchers (``CUDA_OPS``) of the same contract. The functional core (pmm_gpu/functional.py)
calls ``backend.ops.<op>`` and the backend's eigensolver methods and never tests which backend it has.

Eigensolvers. ``eigh`` diagonalises a batch; ``assemble_eigh`` forms M(x) = M_0 + Σ_i x_i M_i (+ a
constant shift) and diagonalises it; ``assemble_eigh_observable`` goes on to the AO-PMM observables.
On NumPy they are array code around LAPACK (the reference oracle); on CUDA the ``solver`` chooses
cuSOLVER (cupy.linalg.eigh, the same array code) or pmm_gpu's Jacobi kernel (ops/jacobi.py), which
fuses the assembly, the selection of eigenvectors and the observables into one launch.

CPU threads. A NumPy op runs on one core; ``split`` cuts a batch into one contiguous part per thread
(``set_num_threads``; default: the usable cores) and ``map`` runs a function over the parts on a thread
pool (NumPy and LAPACK release the GIL). The training step (models/base.py) and the eigensolver use
them; the CUDA backend has one part, the GPU parallelising inside every launch.

Device selection (docs/DESIGN.md §3): ``device="cpu" | "cuda" | "auto"``; "auto" picks CUDA only when
``cupy.is_available()`` is true. CuPy is imported lazily, never at import time of pmm_gpu.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _pool
from ._xp import nvtx_range
from .ops import adam, assemble, eigh, jacobi, observable

DEVICES = ("auto", "cpu", "cuda")
EIGH_SOLVERS = ("auto", "cusolver", "jacobi")
# On CUDA, "auto" takes the Jacobi kernel (ops/jacobi.py) for n <= AUTO_JACOBI_MAX_N, else cuSOLVER.
# 0 (always cuSOLVER) until a GPU measurement shows the kernel faster: run profiling/bench_eigh.py
# (profiling/gpu_check.sh does), and where profiling/results/ shows jacobi ahead of cusolver in case E
# and end-to-end (cases A-C) set this to the largest such n (at most jacobi.NMAX = 32).
AUTO_JACOBI_MAX_N = 0
# The fused Jacobi launches assemble each entry of M(x) in the kernel, a loop over the p + 1 terms
# (about 1,600 dependent FMAs per entry at p = 784, case D); above this p the CUDA backend forms
# M(x) by GEMM (cuBLAS, ``assemble``) and runs the plain Jacobi kernel instead. 32 is a
# guess until profiling/bench_eigh.py measures the crossover on a GPU.
FUSED_ASSEMBLY_MAX_P = 32
# ``assemble`` forms M(x) with one GEMM over the full matrices up to this p, and over the packed ones
# (then unpacked) above it. Measured on the CPU (n = 8, B = 1024, complex, ms): p = 2 0.03 vs 1.3, p = 32
# 0.19 vs 0.25, p = 128 0.73 vs 0.53; the unpacking's fresh (B, n, n) temporaries are what the folded
# GEMM saves, its doubled flops what it pays.
FOLDED_ASSEMBLY_MAX_P = 64


@dataclass(frozen=True)
class KernelOps:
    """The ops that have a CUDA kernel (kernels/<family>.cu); each entry has one signature and contract
    on both backends (see the op's docstring in pmm_gpu/ops/)."""

    assemble_forward: Callable
    assemble_backward: Callable
    eigvals_vjp: Callable
    eigh_vjp: Callable
    observable_forward: Callable
    observable_backward: Callable
    adam_step: Callable


NUMPY_OPS = KernelOps(
    assemble_forward=assemble.assemble_forward, assemble_backward=assemble.assemble_backward,
    eigvals_vjp=eigh.eigvals_vjp, eigh_vjp=eigh.eigh_vjp,
    observable_forward=observable.observable_forward, observable_backward=observable.observable_backward,
    adam_step=adam.adam_step)
CUDA_OPS = KernelOps(
    assemble_forward=assemble.assemble_forward_cuda, assemble_backward=assemble.assemble_backward_cuda,
    eigvals_vjp=eigh.eigvals_vjp_cuda, eigh_vjp=eigh.eigh_vjp_cuda,
    observable_forward=observable.observable_forward_cuda, observable_backward=observable.observable_backward_cuda,
    adam_step=adam.adam_step_cuda)


def cuda_status() -> tuple[bool, str]:
    """(usable, reason). Never raises: a driverless machine reports False with the reason."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        return False, f"CuPy is not importable ({type(e).__name__}: {e}); install pmm_gpu[cuda12] or pmm_gpu[cuda13]"
    try:
        if cupy.is_available():
            return True, "ok"
    except Exception as e:
        return False, f"cupy.is_available() failed ({type(e).__name__}: {e})"
    return False, "CuPy is installed but sees no usable CUDA device (cupy.is_available() is False)"


def check_eigh_solver(solver: str, n: int) -> str:
    """Validate a model's ``eigh_solver`` for n×n matrices: one of EIGH_SOLVERS; "jacobi" needs n <= 32."""
    if solver not in EIGH_SOLVERS:
        raise ValueError(f"eigh_solver must be one of {list(EIGH_SOLVERS)}, got {solver!r}")
    if solver == "jacobi" and n > jacobi.NMAX:
        raise ValueError(f"eigh_solver='jacobi' supports n <= {jacobi.NMAX} (kernels/jacobi.cu), got n = {n}; "
                         "use eigh_solver='cusolver' or 'auto'")
    return solver


def resolve_eigh_solver(solver: str, n: int) -> str:
    """The CUDA eigensolver that ``solver`` means for n×n matrices: "cusolver" or "jacobi"."""
    if solver == "auto":
        return "jacobi" if n <= AUTO_JACOBI_MAX_N else "cusolver"
    return check_eigh_solver(solver, n)


USABLE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_num_threads(n: int):
    """Threads the CPU backend splits each batch over (``NumpyBackend.split``; default: usable cores)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be an int >= 1, got {n!r}")
    NumpyBackend.num_threads = n


class NumpyBackend:
    """CPU backend and reference oracle."""

    name = "cpu"
    ops = NUMPY_OPS
    num_threads = USABLE_CORES

    def __init__(self):
        self.xp = np

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def eigh(self, M, solver: str = "auto", failures=None, vectors: bool = True):
        """Batched Hermitian eigendecomposition: M (B, n, n) -> w (B, n) ascending, V (B, n, n)
        (V is None with ``vectors=False``: eigenvalues only, about half the work, for inference).

        solver: "auto" | "cusolver" | "jacobi" (EIGH_SOLVERS), the CUDA eigensolver; on the NumPy
        backend every choice is numpy.linalg.eigh (LAPACK), the oracle the CUDA solvers are tested
        against. failures: optional 0-d integer array; the number of matrices a solver reports as not
        converged is added to it in place, on the device (never here: LAPACK raises instead).
        """
        if not vectors:
            return self._lapack_batched(np.linalg.eigvalsh, M), None
        return self._lapack_batched(np.linalg.eigh, M)

    def _lapack_batched(self, f, M):
        """f (numpy.linalg.eigh or eigvalsh) over the batch M (B, n, n), one ``split`` part per thread;
        the parts' results are joined along the batch axis, bitwise those of one call.

        NumPy's linalg gufuncs release the GIL but loop over the batch on one core, and LAPACK is
        single-threaded at PMM sizes, so the parts run truly in parallel (eigh: 1.45× at n = 8, 1.85×
        at n = 16 on 2 cores, B = 1024).
        """
        parts = self.split(M.shape[0])
        if len(parts) == 1:
            return f(M)
        return eigh.concat_batches(self.map(lambda ab: f(M[ab[0]:ab[1]]), parts), np)

    def split(self, B: int) -> list[tuple[int, int]]:
        """A batch of B items as contiguous (start, stop) parts, one per thread: min(num_threads,
        B // MIN_PART) of them (at least one; exactly one inside a part already running on the pool)."""
        k = 1 if _pool.in_part() else min(self.num_threads, B // _pool.MIN_PART)
        if k <= 1:
            return [(0, B)]
        bounds = np.linspace(0, B, k + 1).astype(int).tolist()
        return list(zip(bounds[:-1], bounds[1:]))

    def map(self, fn, items) -> list:
        """[fn(item) for item in items], on the thread pool when there are several (the parts of ``split``).
        Every part has finished when it returns or raises (the first part's error, in item order)."""
        items = list(items)
        if len(items) <= 1:
            return [fn(item) for item in items]
        return _pool.run_parts(fn, items, self.num_threads)

    def assemble(self, X, Pp, n: int, field: str, shift=None):
        """M (B, n, n) = M_0 + Σ_i x_bi M_i (+ shift (n, n)) for X (B, p) and Pp (p+1, P) packed.

        Up to p = FOLDED_ASSEMBLY_MAX_P, one real GEMM of X with the full matrices M_1..M_p, each stored as
        its interleaved (Re, Im) entries, writes M's memory directly (then M_0 is added). Beyond it
        Mp = M_0 + X @ Pp[1:] (B, P) and the unpacking: a GEMM over the P <= n² packed columns instead of
        2n² halves the flops, which dominate at large p. Both give bitwise the same M. No [1, X] copy is
        made: at p = 784 it is a fresh 6 MB array per batch of 1024.
        """
        if X.shape[1] <= FOLDED_ASSEMBLY_MAX_P:
            Ms = self.ops.assemble_forward(Pp, n, field).reshape(len(Pp), n * n)  # (p+1, n²)
            Mr = Ms.view(Ms.real.dtype)  # (p+1, n²) real or (p+1, 2n²) interleaved
            M = X @ Mr[1:]
            M += Mr[0]
            M = M.view(Ms.dtype).reshape(-1, n, n)
        else:
            Mp = X @ Pp[1:]
            Mp += Pp[0]
            M = self.ops.assemble_forward(Mp, n, field)  # (B, P) packed, then (B, n, n)
        if shift is not None:
            M += shift
        return M

    def assemble_vjp(self, X, Pp, Abar, n: int, field: str, input_grad: bool = True):
        """The reverse mode of ``assemble`` (shift aside) from Ā (B, n, n): (P̄ (p+1, P), X̄ (B, p) or None)

            P̄_0 = assemble_backward(Σ_b Ā_b),  P̄_i = assemble_backward(Σ_b x_bi Ā_b),  X̄_bi = Re tr(Ā_bᴴ M_i).

        Up to FOLDED_ASSEMBLY_MAX_P (as ``assemble``) a column sum and a GEMM over Ā's interleaved (Re, Im)
        entries, then the packing of only the p + 1 sums; above it the packed Ḡ = assemble_backward(Ā)
        (B, P), P̄ = [Σ_b Ḡ_b; Xᵀ Ḡ] and X̄ = Ḡ Pp[1:]ᵀ (Ḡ·p_i = Re tr(Āᴴ M_i): assemble_backward is
        assemble_forward's adjoint).
        """
        xp = self.xp
        if X.shape[1] > FOLDED_ASSEMBLY_MAX_P:
            G = self.ops.assemble_backward(Abar, n, field)  # (B, P)
            Pbar = xp.concatenate([G.sum(axis=0)[None], X.T @ G], axis=0)
            return Pbar, (G @ Pp[1:].T if input_grad else None)
        A = xp.ascontiguousarray(Abar).reshape(len(X), n * n)
        Ar = A.view(A.real.dtype)  # (B, n²) real or (B, 2n²) interleaved
        sums = xp.concatenate([Ar.sum(axis=0)[None], X.T @ Ar], axis=0)  # (p+1, n²) or (p+1, 2n²)
        Pbar = self.ops.assemble_backward(sums.view(A.dtype).reshape(-1, n, n), n, field)
        if not input_grad:
            return Pbar, None
        Ms = self.ops.assemble_forward(Pp[1:], n, field).reshape(-1, n * n)  # (p, n²)
        Ms = Ms.astype(A.dtype).view(Ar.dtype) if xp.iscomplexobj(A) else xp.ascontiguousarray(Ms.real)
        return Pbar, Ar @ Ms.T

    def assemble_eigh(self, X, Pp, n: int, field: str, *, shift=None, k: int | None = None, which: str = "SA",
                      solver: str = "auto", failures=None):
        """w (B, n) ascending and V of M(x_b) = M_0 + Σ_i x_bi M_i (+ shift) for X (B, p), Pp (p+1, P).

        V (B, n, n) all eigenvectors (k None); (B, n, k) the k that ``eigh.select_indices(w, k, which)``
        picks, in that order; None for k = 0 (eigenvalues only, the cheaper solver call).
        """
        with nvtx_range("assemble"):
            M = self.assemble(X, Pp, n, field, shift)
        with nvtx_range("eigh"):
            w, V = self.eigh(M, solver, failures, vectors=k != 0)
        if k is not None and k != 0:
            V = eigh.select(w, V, eigh.select_indices(w, k, which))[1]
        return w, V

    def assemble_eigh_observable(self, X, Pp, D, n: int, field: str, r: int, which: str, form: str, *,
                                 shift=None, solver: str = "auto", failures=None):
        """AO-PMM observables t (B, K) = observable_forward(V_S, D, form)[0] of M(x_b), V_S the r
        eigenvectors ``which`` picks (as ``assemble_eigh``); D (K, n, n) the full secondaries."""
        _, V_S = self.assemble_eigh(X, Pp, n, field, shift=shift, k=r, which=which, solver=solver, failures=failures)
        return self.ops.observable_forward(V_S, D, form)[0]

    def free_memory(self) -> int:
        """Bytes this backend may still allocate: the host's MemAvailable (Linux; else 4 GiB)."""
        try:
            with open("/proc/meminfo") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError):
            return 4 * 2**30

    def synchronize(self):
        pass

    def describe(self) -> dict:
        return {"backend": "numpy", "device": "cpu"}


class CupyBackend(NumpyBackend):
    """NVIDIA GPU backend: CuPy arrays, cuSOLVER batched eigh or the Jacobi kernel, pmm_gpu RawKernels."""

    name = "cuda"
    ops = CUDA_OPS

    def __init__(self):
        import cupy

        self.xp = cupy

    def to_numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    def split(self, B: int) -> list[tuple[int, int]]:
        """One part: the GPU parallelises inside every launch, and one stream orders the launches."""
        return [(0, B)]

    def eigh(self, M, solver: str = "auto", failures=None, vectors: bool = True):
        """As NumpyBackend.eigh; "cusolver": cupy.linalg.eigh (syevj/heevjBatched), in chunks of
        ``eigh.eigh_max_batch`` matrices (its lwork is a 32-bit int), and, since CuPy ignores the
        solver's info flags, ``eigh.eigh_probe`` checks a few matrices of each call (residual and
        orthogonality; NaN too) and counts the bad ones into ``failures``; "jacobi": the pmm_gpu
        kernel (n <= 32), whose per-matrix sweep counts (−1: missed the sweep cap, or NaN/Inf input)
        are counted into ``failures``. Both on the device, without a host synchronisation."""
        n = M.shape[-1]
        if resolve_eigh_solver(solver, n) == "cusolver":
            f = self.xp.linalg.eigh if vectors else self.xp.linalg.eigvalsh
            dev = getattr(getattr(M, "device", None), "id", 0)
            out = eigh.eigh_chunked(f, M, self.xp, eigh.eigh_max_batch(n, eigh.cusolver_lwork(n, M.dtype.char, dev)))
            w, V = out if vectors else (out, None)
            if failures is not None and eigh.PROBE_SAMPLES:
                failures += eigh.eigh_probe(M, w, V)
            return w, V
        w, V, sweeps = jacobi.eigh_jacobi_cuda(M, k=None if vectors else 0, max_sweeps=jacobi.MAX_SWEEPS)
        _count_failures(failures, sweeps)
        return w, (V if vectors else None)

    def assemble_eigh(self, X, Pp, n: int, field: str, *, shift=None, k: int | None = None, which: str = "SA",
                      solver: str = "auto", failures=None):
        """As NumpyBackend.assemble_eigh; with the Jacobi solver and no shift one fused launch
        (``jacobi.assemble_eigh_jacobi_cuda``: the (B, n, n) batch never goes through global memory,
        only the k selected eigenvectors are written); for p > FUSED_ASSEMBLY_MAX_P features the
        assembly is a GEMM instead (``assemble``) and the plain kernel selects the same k columns."""
        if shift is not None or resolve_eigh_solver(solver, n) != "jacobi":
            return super().assemble_eigh(X, Pp, n, field, shift=shift, k=k, which=which, solver=solver,
                                         failures=failures)
        if X.shape[1] > FUSED_ASSEMBLY_MAX_P:
            with nvtx_range("assemble"):
                M = self.assemble(X, Pp, n, field)  # (B, n, n) by cuBLAS GEMM
            with nvtx_range("eigh"):
                w, V, sweeps = jacobi.eigh_jacobi_cuda(M, k=k, which=which, max_sweeps=jacobi.MAX_SWEEPS)
        else:
            with nvtx_range("assemble+eigh"):
                w, V, sweeps = jacobi.assemble_eigh_jacobi_cuda(X, Pp, n, field, k=k, which=which,
                                                                max_sweeps=jacobi.MAX_SWEEPS)
        _count_failures(failures, sweeps)
        return w, (None if k == 0 else V)

    def assemble_eigh_observable(self, X, Pp, D, n: int, field: str, r: int, which: str, form: str, *,
                                 shift=None, solver: str = "auto", failures=None):
        """As NumpyBackend.assemble_eigh_observable; with the Jacobi solver and no shift one fused launch
        (``jacobi.assemble_eigh_observable_jacobi_cuda``: no eigenvector leaves the kernel); for
        p > FUSED_ASSEMBLY_MAX_P the GEMM assembly of ``assemble_eigh``, then the observable kernel."""
        if shift is not None or resolve_eigh_solver(solver, n) != "jacobi" or X.shape[1] > FUSED_ASSEMBLY_MAX_P:
            return super().assemble_eigh_observable(X, Pp, D, n, field, r, which, form, shift=shift,
                                                    solver=solver, failures=failures)
        with nvtx_range("assemble+eigh+observable"):
            t, sweeps = jacobi.assemble_eigh_observable_jacobi_cuda(X, Pp, D, n, field, r, which, form,
                                                                    max_sweeps=jacobi.MAX_SWEEPS)
        _count_failures(failures, sweeps)
        return t

    def free_memory(self) -> int:
        """Bytes free on the current device: the driver's free memory plus CuPy's pool's cached blocks."""
        free, _ = self.xp.cuda.runtime.memGetInfo()
        return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def describe(self) -> dict:
        cupy = self.xp
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        # CuPy's getDeviceProperties is a dict of cudaDeviceProp fields; "name" is bytes (CuPy 13/14).
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return {"backend": "cupy", "device": f"cuda:{dev.id}", "gpu": name,
                "compute_capability": dev.compute_capability, "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                "cuda_driver": cupy.cuda.runtime.driverGetVersion()}


def _count_failures(failures, sweeps):
    """Add the Jacobi kernel's non-converged matrices (sweeps −1) to the device counter, if one is kept."""
    if failures is not None:
        failures += jacobi.not_converged(sweeps)


_BACKENDS: dict[str, NumpyBackend] = {}


def get_backend(device: str = "auto") -> NumpyBackend:
    """Backend for ``device`` ("auto", "cpu" or "cuda"); "cuda" without a usable GPU is a RuntimeError."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = "cuda" if cuda_status()[0] else "cpu"
    elif device == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise RuntimeError(f"device='cuda' requested but no GPU is usable: {why}. Use device='cpu' or 'auto'.")
    if device not in _BACKENDS:
        _BACKENDS[device] = CupyBackend() if device == "cuda" else NumpyBackend()
    return _BACKENDS[device]


def backend_of(a) -> NumpyBackend:
    """The backend that owns array ``a``: NumPy arrays the CPU backend, CuPy arrays the CUDA backend."""
    return get_backend("cpu" if isinstance(a, np.ndarray) else "cuda")
