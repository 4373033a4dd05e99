"""The CPU backend's thread pool: the parts of a split batch run on it (backend.NumpyBackend.split/map).

NumPy ops and LAPACK release the GIL, so parts of a batch computed on separate threads run in parallel.
A part never splits again: a nested split would wait on the pool it occupies.
"""
from __future__ import annotations

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

    futures = [_thread_pool(workers).submit(part, item) for item in items]
    wait(futures)
    return [f.result() for f in futures]
