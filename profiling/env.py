"""What every benchmark records beside its numbers: commit, host, thread pools, peak memory, medians,
and a JSON file rewritten after every section, so a run cut short (a timeout) keeps what it measured.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import time

import numpy as np

from . import pypmm_peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# After a parallel region, OpenMP worker threads (torch's, JAX's) keep spinning for a while before they
# sleep (libgomp/libiomp block time, ~0.2 s): timed right after, the next engine would share the cores
# with them. An idle pause before every timed CPU run lets them settle; it is not part of any timing.
SETTLE_S = 0.3


def commit() -> str:
    """``git rev-parse --short=12 HEAD`` (+ "-dirty" when pmm_gpu/ or kernels/ have local changes);
    $GPU_CHECK_COMMIT where git or the repository's .git is absent (a copied tree); else "unknown"."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", "pmm_gpu", "kernels"],
                                   capture_output=True).returncode
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:  # no git executable
        pass
    return os.environ.get("GPU_CHECK_COMMIT", "unknown")


def host() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{socket.gethostname()} | {cpu} x{os.cpu_count()} | Python {platform.python_version()} | NumPy {np.__version__}"


def stats(values) -> dict:
    """median, min, max and n_runs of the timed runs."""
    v = np.asarray(values, float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n_runs": int(v.size)}


def settle(device: str):
    if device == "cpu":
        time.sleep(SETTLE_S)


def set_threads(n: int | None) -> str:
    """Pin every engine's CPU thread pools to n threads (None: leave the defaults); returns a description."""
    from pmm_gpu.backend import NumpyBackend, set_num_threads

    if n:
        set_num_threads(n)  # pmm_gpu's CPU backend: the threads each batch is split over
    desc = [f"pmm_gpu {NumpyBackend.num_threads}"]
    try:
        import torch
        if n:
            torch.set_num_threads(n)
        desc.append(f"torch {torch.get_num_threads()}")
    except Exception:  # noqa: BLE001 -- torch absent or broken: nothing to pin
        pass
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        if n:
            threadpool_limits(n)
        desc += [f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info()]
    except Exception:  # noqa: BLE001
        if n:
            desc.append("BLAS pool not limited (threadpoolctl not importable)")
    return ", ".join(desc) or "defaults"


class PeakMemory:
    """Peak host RSS of this process during a block (Linux: VmHWM reset through /proc/self/clear_refs),
    or the device pool's high-water mark on cuda."""

    def __init__(self, device: str, engine: str):
        self.device, self.engine, self.mb = device, engine, float("nan")

    def __enter__(self):
        if self.device == "cuda" and self.engine == "torch":
            import torch
            torch.cuda.reset_peak_memory_stats()
        elif self.device == "cuda":
            import cupy
            cupy.get_default_memory_pool().free_all_blocks()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device == "cuda" and self.engine == "torch":
            import torch
            self.mb = torch.cuda.max_memory_allocated() / 2**20
        elif self.device == "cuda":
            import cupy
            self.mb = cupy.get_default_memory_pool().total_bytes() / 2**20  # the pool only grows
        else:
            try:
                with open("/proc/self/status") as f:
                    self.mb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
            except (OSError, StopIteration):
                self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process lifetime peak


class Recorder:
    """The records of a run, each stamped with ``meta`` (commit, host, ...); ``add`` appends and, with
    a ``path``, rewrites the JSON list there at once (atomically), so an interrupted run keeps them."""

    def __init__(self, path: str | None, meta: dict):
        self.path, self.meta, self.records = path, meta, []

    def add(self, records: list[dict]) -> list[dict]:
        stamped = [{**r, **self.meta, "loadavg": round(os.getloadavg()[0], 2)} for r in records]
        self.records += stamped
        if self.path:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.records, f, indent=1)
            os.replace(tmp, self.path)
        return stamped


def pypmm_note() -> str | None:
    """None when the authors' library can be driven here (profiling/pypmm_peer.py), else why it is skipped."""
    why = pypmm_peer.available()
    return f"pypmm skipped: {why}" if why else None


def torch_note(device: str) -> str | None:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 -- ImportError, or a broken install
        return f"torch skipped: not importable ({type(e).__name__}); pip install pmm_gpu[bench]"
    if device == "cuda" and not torch.cuda.is_available():
        return "torch skipped on cuda: torch.cuda.is_available() is False (CPU-only torch build?)"
    return None
