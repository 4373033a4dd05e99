"""Array-module helpers every module may import: NumPy or CuPy for an array, and NVTX ranges.

A leaf: imports nothing of pmm_gpu, and CuPy / nvtx only lazily, so importing it never touches a GPU.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np


def array_module(a):
    """NumPy or CuPy, whichever owns ``a`` (like cupy.get_array_module, without importing CuPy)."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np
    import cupy

    return cupy.get_array_module(a)


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
