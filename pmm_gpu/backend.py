"""The one place where NumPy and CuPy differ.

A backend bundles the array module (`xp`), host/device transfers, the eigensolver and the handful of
ops that have a CUDA kernel. The NumPy backend is the reference oracle: every op it uses is written
with plain array code in the op's own module. The CuPy backend reuses that array code (CuPy mirrors
NumPy's API) and swaps in the RawKernel launchers where pmm_gpu has one. Model and trainer code call
``backend.<op>`` and never test which backend they hold.

Device selection (DESIGN.md §3): ``device="cpu" | "cuda" | "auto"``; "auto" picks CUDA only when
``cupy.is_available()`` is true. CuPy is imported lazily, never at import time of pmm_gpu.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEVICES = ("auto", "cpu", "cuda")
EIGH_SOLVERS = ("auto", "cusolver", "jacobi")
# On CUDA, "auto" takes the Jacobi kernel (pmm_gpu/jacobi.py) for n <= AUTO_JACOBI_MAX_N, else cuSOLVER.
# 0 (always cuSOLVER) until a GPU measurement shows the kernel faster: run profiling/bench_eigh.py
# (profiling/gpu_check.sh does), and where profiling/results/ shows jacobi ahead of cusolver in case E
# and end-to-end (cases A-C) set this to the largest such n (at most jacobi.NMAX = 32).
AUTO_JACOBI_MAX_N = 0


def array_module(a):
    """NumPy or CuPy, whichever owns ``a`` (like cupy.get_array_module, without importing CuPy)."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np
    import cupy

    return cupy.get_array_module(a)


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
    from .jacobi import NMAX

    if solver not in EIGH_SOLVERS:
        raise ValueError(f"eigh_solver must be one of {list(EIGH_SOLVERS)}, got {solver!r}")
    if solver == "jacobi" and n > NMAX:
        raise ValueError(f"eigh_solver='jacobi' supports n <= {NMAX} (kernels/jacobi.cu), got n = {n}; "
                         "use eigh_solver='cusolver' or 'auto'")
    return solver


def resolve_eigh_solver(solver: str, n: int) -> str:
    """The CUDA eigensolver that ``solver`` means for n×n matrices: "cusolver" or "jacobi"."""
    if solver == "auto":
        return "jacobi" if n <= AUTO_JACOBI_MAX_N else "cusolver"
    return check_eigh_solver(solver, n)


@functools.lru_cache(maxsize=None)
def _nvtx_annotate():
    try:
        import nvtx
        return nvtx.annotate
    except Exception:
        return None


def nvtx_range(name: str):
    """An NVTX range for Nsight timelines, or a no-op when the optional `nvtx` package is absent."""
    annotate = _nvtx_annotate()
    return annotate(name, domain="pmm_gpu") if annotate else contextlib.nullcontext()


# Ops that have a CUDA kernel, as (module, op): the NumPy reference is ``module.op``, the CuPy
# launcher ``module.op_cuda`` (kernels/<family>.cu), with the same signature and contract.
KERNEL_OPS = (("assemble", "assemble_forward"), ("assemble", "assemble_backward"), ("eigen", "eigh_vjp"),
              ("eigen", "eigvals_vjp"), ("observable", "observable_forward"),
              ("observable", "observable_backward"), ("adam", "adam_step"))


_MIN_CHUNK = 64


@functools.lru_cache(maxsize=None)
def _thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="pmm_gpu-lapack")


def set_num_threads(n: int):
    """Threads the CPU backend splits each batched eigendecomposition over (default: usable cores)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be an int >= 1, got {n!r}")
    NumpyBackend.num_threads = n


def _bind_kernel_ops(backend, suffix: str):
    for module, op in KERNEL_OPS:
        setattr(backend, op, getattr(importlib.import_module(f".{module}", __package__), op + suffix))


class NumpyBackend:
    """CPU backend and reference oracle."""

    name = "cpu"
    num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def __init__(self):
        self.xp = np
        _bind_kernel_ops(self, suffix="")  # the NumPy references

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
        """f (numpy.linalg.eigh or eigvalsh) over the batch M (B, n, n) in up to ``num_threads``
        contiguous chunks on a thread pool; per-chunk results are joined along the batch axis.

        NumPy's linalg gufuncs release the GIL but loop over the batch on one core, and LAPACK is
        single-threaded at PMM sizes, so the chunks run truly in parallel (eigh: 1.45× at n = 8, 1.85×
        at n = 16 on 2 cores, B = 1024), and the result is bitwise the same. Splitting the cheaper
        per-sample ops (assembly, VJPs) the same way measured slower at n = 8 and ±5 % at n = 16.
        Chunks below _MIN_CHUNK matrices are not worth a thread.
        """
        chunks = min(self.num_threads, M.shape[0] // _MIN_CHUNK)
        if chunks <= 1:
            return f(M)
        from .eigen import concat_batches

        bounds = np.linspace(0, M.shape[0], chunks + 1).astype(int)
        parts = _thread_pool(self.num_threads).map(f, [M[a:b] for a, b in zip(bounds, bounds[1:])])
        return concat_batches(list(parts), np)

    def eigh_assemble(self, X, Pp, n: int, field: str, solver: str = "auto", failures=None, k=None, which="SA"):
        """(w, V) of M(x_b) = assemble_forward([1, x_b] @ Pp) in one fused launch, or None where this
        backend has no fused kernel for ``solver`` (the caller then assembles and calls ``eigh``).
        k, which: V (B, n, k) holds only the eigenvectors ``eigen.select_indices(w, k, which)`` picks,
        in that order (default: all n, ascending; k = 0: eigenvalues only)."""
        return None

    def eigh_observable(self, X, Pp, D, n: int, field: str, r: int, which: str, form: str, solver: str = "auto",
                        failures=None):
        """AO-PMM observables t (B, K) = observable_forward(V_S, D, form)[0] of M(x_b), V_S the r
        eigenvectors ``which`` picks, in one fused launch (assemble + eigh + select + reduce); None where
        this backend has none for ``solver`` (the caller then goes step by step)."""
        return None

    def synchronize(self):
        pass

    def describe(self) -> dict:
        return {"backend": "numpy", "device": "cpu"}


class CupyBackend(NumpyBackend):
    """NVIDIA GPU backend: CuPy arrays, cuSOLVER batched eigh, pmm_gpu RawKernels."""

    name = "cuda"

    def __init__(self):
        import cupy

        self.xp = cupy
        _bind_kernel_ops(self, suffix="_cuda")  # the RawKernel launchers

    def to_numpy(self, a) -> np.ndarray:
        return self.xp.asnumpy(a)

    def eigh(self, M, solver: str = "auto", failures=None, vectors: bool = True):
        """As NumpyBackend.eigh; "cusolver": cupy.linalg.eigh (syevj/heevjBatched), in chunks, since it
        takes a 32-bit lwork; "jacobi": the pmm_gpu kernel (n <= 32), whose per-matrix sweep counts
        (−1: missed the sweep cap, or NaN/Inf input) are counted into ``failures`` on the device."""
        from . import jacobi
        from .eigen import eigh_chunked

        if resolve_eigh_solver(solver, M.shape[-1]) == "cusolver":
            if not vectors:
                return eigh_chunked(self.xp.linalg.eigvalsh, M, self.xp), None
            return eigh_chunked(self.xp.linalg.eigh, M, self.xp)
        w, V, sweeps = jacobi.eigh_jacobi_cuda(M, k=None if vectors else 0, max_sweeps=jacobi.MAX_SWEEPS)
        _count_failures(failures, sweeps)
        return w, (V if vectors else None)

    def eigh_assemble(self, X, Pp, n: int, field: str, solver: str = "auto", failures=None, k=None, which="SA"):
        """With the Jacobi solver: ``jacobi.eigh_jacobi_assemble_cuda`` (the (B, n, n) batch never goes
        through global memory; only the k selected eigenvectors are written); None for cuSOLVER.
        X (B, p), Pp (p + 1, P) packed primaries."""
        from . import jacobi

        if resolve_eigh_solver(solver, n) != "jacobi":
            return None
        with nvtx_range("assemble+eigh"):
            w, V, sweeps = jacobi.eigh_jacobi_assemble_cuda(X, Pp, n, field, k=k, which=which,
                                                            max_sweeps=jacobi.MAX_SWEEPS)
        _count_failures(failures, sweeps)
        return w, V

    def eigh_observable(self, X, Pp, D, n: int, field: str, r: int, which: str, form: str, solver: str = "auto",
                        failures=None):
        """With the Jacobi solver: ``jacobi.eigh_jacobi_observable_cuda`` (no eigenvector leaves the
        kernel); None for cuSOLVER."""
        from . import jacobi

        if resolve_eigh_solver(solver, n) != "jacobi":
            return None
        with nvtx_range("assemble+eigh+observable"):
            t, sweeps = jacobi.eigh_jacobi_observable_cuda(X, Pp, D, n, field, r, which, form,
                                                           max_sweeps=jacobi.MAX_SWEEPS)
        _count_failures(failures, sweeps)
        return t

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    def describe(self) -> dict:
        cupy = self.xp
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        # CuPy's getDeviceProperties is a dict of cudaDeviceProp fields; "name" is bytes (CuPy 13/14).
        return {"backend": "cupy", "device": f"cuda:{dev.id}", "gpu": name,
                "compute_capability": dev.compute_capability, "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                "cuda_driver": cupy.cuda.runtime.driverGetVersion()}


def _count_failures(failures, sweeps):
    """Add the Jacobi kernel's non-converged matrices (sweeps −1) to the device counter, if one is kept."""
    if failures is not None:
        from .jacobi import not_converged

        failures += not_converged(sweeps)


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
