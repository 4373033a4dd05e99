"""The CPU backend's thread pool: the parts of a split batch run on it (backend.NumpyBackend.split/map).

NumPy ops and LAPACK release the GIL, so parts of a batch computed on separate threads run in parallel.
A part never splits again: a nested split would wait on the pool it occupies. While parts run, BLAS is
held to one thread per call when threadpoolctl is importable (``pip install pmm_gpu[cpu]``): OpenBLAS's
own threads inside every part oversubscribe the cores (case D, p = 784, 2 cores: a step of 18.9 ms split
over 2 threads with 2 BLAS threads each, 12.9 ms with 1, 16.3 ms unsplit).
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

MIN_PART = 64  # items per thread below which splitting a batch costs more than it saves
_part = threading.local()  # .active: this thread is running a part of a split batch


@functools.lru_cache(maxsize=None)
def _thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="pmm_gpu-cpu")


# A forked child inherits the cached pool but not its threads: its first map would wait forever (the
# pool counts the parent's idle workers as its own). The child starts with no pool and makes its own.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_thread_pool.cache_clear)


def in_part() -> bool:
    """True on a thread that is running a part of a split batch."""
    return getattr(_part, "active", False)


def run_parts(fn, items: list, workers: int) -> list:
    """[fn(item) for item in items] on a pool of ``workers`` threads, each call marked as a part (``in_part``).
    Every call has finished when it returns or raises (the first failed item's error, in item order)."""
    def part(item):
        _part.active = True
        try:
            return fn(item)
        finally:
            _part.active = False

    with _one_blas_thread():
        futures = [_thread_pool(workers).submit(part, item) for item in items]
        wait(futures)
    return [f.result() for f in futures]


@functools.lru_cache(maxsize=None)
def _blas_controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


_blas_lock = threading.Lock()
_blas_limit = {"depth": 0, "limiter": None}  # callers of run_parts now running; the limiter to restore


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS limited to one thread from the first concurrent caller's entry to the last one's exit (a
    counted limit: two callers on separate threads must not restore each other's settings)."""
    ctl = _blas_controller()
    if ctl is None:
        yield
        return
    with _blas_lock:
        if _blas_limit["depth"] == 0:
            _blas_limit["limiter"] = ctl.limit(limits=1, user_api="blas")
        _blas_limit["depth"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_limit["depth"] -= 1
            if _blas_limit["depth"] == 0:
                _blas_limit["limiter"].restore_original_limits()
