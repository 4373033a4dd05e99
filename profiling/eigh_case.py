"""Case E of docs/DESIGN.md §5: the eigensolvers alone, timed side by side, checked while timed.

One ``run_eigh`` serves profiling/bench.py (pmm_gpu's default solver against torch.linalg.eigh) and
profiling/bench_eigh.py (pmm_gpu's Jacobi kernel against cuSOLVER): engines are built by
``eigh_engines``, sizes and batches come from the caller's config (``eigh_sizes``,
``eigh_batches(n, device)``, per-solver caps ``eigh_caps``, ``repeats``, ``dtype``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import pmm_gpu

from . import env

CHECK_TOL = {"float32": 1e-5, "float64": 1e-12}  # eigenvalues vs the first engine's, relative to max |λ|


@dataclass
class EighEngine:
    """One eigensolver of case E: ``call(prepare(M), failures)`` returns the eigenvalues (B, n)."""

    name: str
    solver: str
    prepare: Callable
    call: Callable
    sync: Callable
    cap: int | None = None  # largest batch it is timed at


def eigh_engines(device: str, engines, solvers, cfg, notes, backend=None) -> list[EighEngine]:
    """pmm_gpu's ``backend.eigh`` once per solver ("auto" -> engine "pmm_gpu", else "pmm_gpu/<solver>";
    on the CPU every solver is LAPACK, labelled "numpy", and "jacobi" is skipped), then torch.
    backend: default ``pmm_gpu.get_backend(device)`` (the tests pass the emulated CUDA backend)."""
    be = backend or pmm_gpu.get_backend(device)
    out = []
    for solver in solvers if "pmm_gpu" in engines else ():
        if device != "cuda" and solver == "jacobi":
            notes.append(f"case E/{device}: jacobi skipped (the kernel runs on CUDA only; the NumPy backend uses LAPACK)")
            continue
        label = solver if device == "cuda" or solver == "auto" else "numpy"
        out.append(EighEngine("pmm_gpu" if label == "auto" else f"pmm_gpu/{label}", label, lambda a: a,
                              lambda M, f, _s=solver: be.eigh(M, _s, f)[0], be.synchronize, cfg.eigh_caps.get(solver)))
    if "torch" in engines and not env.torch_note(device):
        import torch

        out.append(EighEngine("torch", "torch", torch.from_dlpack, lambda M, f: torch.linalg.eigh(M)[0],
                              torch.cuda.synchronize if device == "cuda" else (lambda: None)))
    if "pypmm" in engines:
        notes.append(f"case E/{device}: {env.pypmm_note() or 'pypmm has no eigh-only entry point (it calls jnp.linalg.eigh)'}")
    return out


def random_hermitian(xp, B: int, n: int, real: str, seed: int):
    """(B, n, n) complex Hermitian, generated where it is used (2^20 × 32² complex128 is 16 GiB)."""
    rs = np.random.default_rng(seed) if xp is np else xp.random.RandomState(seed)
    normal = (lambda: rs.standard_normal((B, n, n), dtype=real))  # noqa: E731
    A = normal() + 1j * normal()
    return A + xp.conj(A.swapaxes(1, 2))


def time_calls(sync, fn, repeats: int, device: str) -> list[float]:
    """Seconds of each of ``repeats`` calls of fn(), after one warm-up call; synchronised around each."""
    out = []
    for rep in range(repeats + 1):
        sync()
        env.settle(device)
        t0 = time.perf_counter()
        fn()
        sync()
        if rep:
            out.append(time.perf_counter() - t0)
    return out


def run_eigh(device: str, cfg, notes, engines=("pmm_gpu", "torch"), solvers=("auto",), on_record=None, backend=None):
    """Case E: eigh-only matrices/s of random complex Hermitian batches, n in cfg.eigh_sizes, batches
    cfg.eigh_batches(n, device), for every engine of ``eigh_engines``. Correctness while timing: the
    eigenvalues of the first 256 matrices against the first engine's (pmm_gpu engines must agree to
    CHECK_TOL) and the eigensolver failures counted on the device (must be 0). ``on_record(records)``
    after every (n, batch). Returns (records, check lines, ok)."""
    xp = (backend or pmm_gpu.get_backend(device)).xp
    runs = eigh_engines(device, engines, solvers, cfg, notes, backend)
    records, checks, ok = [], [], True
    for n in cfg.eigh_sizes:
        for B in cfg.eigh_batches(n, device):
            M, w_ref, recs = random_hermitian(xp, B, n, cfg.dtype, seed=n), None, []
            for e in runs:
                Bs = min(B, e.cap or B)
                x, failures, res = e.prepare(M[:Bs]), xp.zeros((), np.int64), {}
                times = time_calls(e.sync, lambda: res.__setitem__("w", e.call(x, failures)), cfg.repeats, device)
                w = xp.from_dlpack(res.pop("w"))[:256]
                w_ref = w if w_ref is None else w_ref
                k = min(len(w), len(w_ref))
                diff = float(xp.abs(w[:k] - w_ref[:k]).max() / max(float(xp.abs(w_ref[:k]).max()), 1e-300))
                failed = int(failures)
                good = failed == 0 and (diff <= CHECK_TOL[cfg.dtype] or not e.name.startswith("pmm_gpu"))
                ok &= good
                recs.append({"case": "E", "engine": e.name, "solver": e.solver, "device": device, "dtype": cfg.dtype,
                             "metric": "eigh_matrices_per_s", **env.stats([Bs / t for t in times]), "n": n,
                             "batch": Bs, "not_converged": failed, "max_rel_diff": diff})
                if e is not runs[0]:
                    checks.append(f"check E n={n} {cfg.dtype}: {e.name} vs {runs[0].name} eigenvalues {diff:.1e}, "
                                  f"{failed} not converged {'ok' if good else 'MISMATCH'}")
                del x, res
            del M
            records += recs
            if on_record:
                on_record(recs)
    return records, checks, ok
