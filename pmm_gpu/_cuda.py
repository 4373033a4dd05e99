"""The one kernel loader: CUDA sources, the per-kernel signature table, and lazily compiled modules.

Each ``kernels/<family>.cu`` becomes one ``cupy.RawModule``, compiled on first use with an explicit
``name_expressions`` entry for every instantiation listed in ``KERNELS`` and cached per device
(the idiom of cupyx's ``signal/_iir_utils.py``). Local ``#include "x.cuh"`` lines are expanded here,
so the code CuPy compiles (and keys its disk cache on) is self-contained.

``KERNELS`` is the signature table: for every kernel its family, template parameters, ordered
(argument name, C type) list and instantiations. The launchers build their argument tuples in that
order, and the tests check it against the C signature in the source and generate the CPU-emulation
wrappers from it (tests/emulator.py). A Python int reaches CuPy as ``long long`` and a Python float
as ``double``, so kernels take exactly those scalar types.

CuPy is imported lazily: importing this module never touches the GPU.
"""
from __future__ import annotations

import functools
import pathlib
import re
from dataclasses import dataclass

import numpy as np

BLOCK = 256  # threads per block of the grid-stride kernels
MAX_GRID = 65536  # enough blocks to fill any current GPU; larger problems loop (grid-stride)
TILES = (8, 16, 32)  # compile-time bounds on n of the shared-memory kernels (eigh_vjp, observable_forward)

# numpy dtype -> the C type naming it in template arguments
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
          np.dtype(np.complex64): "cplx<float>", np.dtype(np.complex128): "cplx<double>"}


@dataclass(frozen=True)
class Kernel:
    """One ``__global__`` function template: where it lives, its signature, its instantiations."""

    family: str  # the source file kernels/<family>.cu
    name: str
    template: tuple[str, ...]  # template parameter names, in order
    args: tuple[tuple[str, str], ...]  # (name, C type), in order; C types may use template names
    instances: tuple[tuple[str, ...], ...]  # template arguments of each compiled instantiation

    def expression(self, targs) -> str:
        """The C++ name of one instantiation, e.g. ``assemble_forward<float, cplx<float>>``."""
        return f"{self.name}<{', '.join(targs)}>"

    def arg_types(self, targs) -> list[str]:
        """The C types of the arguments of one instantiation, e.g. 'const S*' -> 'const cplx<float>*'."""
        names = dict(zip(self.template, targs))
        return [re.sub(r"\b\w+\b", lambda m: names.get(m.group(0), m.group(0)), t) for _, t in self.args]


_REALS = ("float", "double")
_FIELD_PAIRS = tuple((r, s) for r in _REALS for s in (r, f"cplx<{r}>"))
_TILED = tuple((*pair, str(t)) for pair in _FIELD_PAIRS for t in TILES)

KERNELS = {k.name: k for k in (
    Kernel("assemble", "assemble_forward", ("R", "S"),
           (("Mp", "const R*"), ("M", "S*"), ("B", "long long"), ("n", "long long")), _FIELD_PAIRS),
    Kernel("assemble", "assemble_backward", ("R", "S"),
           (("Abar", "const S*"), ("grad", "R*"), ("B", "long long"), ("n", "long long")), _FIELD_PAIRS),
    Kernel("adam", "adam_step", ("T",),
           (("theta", "T*"), ("grad", "const T*"), ("m", "T*"), ("v", "T*"), ("N", "long long"),
            ("lr", "double"), ("beta1", "double"), ("beta2", "double"), ("eps", "double"),
            ("bc1", "double"), ("bc2", "double"), ("scale", "const T*")),
           tuple((r,) for r in _REALS)),
    Kernel("jacobi", "eigh_jacobi", ("R", "S"),
           (("M", "const S*"), ("w", "R*"), ("V", "S*"), ("sweeps", "int*"), ("B", "long long"),
            ("n", "long long"), ("k", "long long"), ("which", "long long"), ("max_sweeps", "long long"),
            ("tol", "double")), _FIELD_PAIRS),
    Kernel("jacobi", "assemble_eigh_jacobi", ("R", "S"),
           (("x", "const R*"), ("Pp", "const R*"), ("w", "R*"), ("V", "S*"), ("sweeps", "int*"),
            ("B", "long long"), ("n", "long long"), ("p", "long long"), ("k", "long long"),
            ("which", "long long"), ("max_sweeps", "long long"), ("tol", "double")), _FIELD_PAIRS),
    Kernel("jacobi_observable", "assemble_eigh_observable_jacobi", ("R", "S"),
           (("x", "const R*"), ("Pp", "const R*"), ("D", "const S*"), ("t", "R*"), ("sweeps", "int*"),
            ("B", "long long"), ("n", "long long"), ("p", "long long"), ("K", "long long"), ("r", "long long"),
            ("which", "long long"), ("form", "long long"), ("max_sweeps", "long long"), ("tol", "double")),
           _FIELD_PAIRS),
    Kernel("eigen_vjp", "eigh_vjp", ("R", "S", "TILE"),
           (("w", "const R*"), ("V", "const S*"), ("idx", "const long long*"), ("Vbar_S", "const S*"),
            ("Abar", "S*"), ("B", "long long"), ("n", "long long"), ("r", "long long"), ("eta", "double")), _TILED),
    Kernel("eigen_vjp", "eigvals_vjp", ("R", "S"),
           (("V_S", "const S*"), ("ybar", "const R*"), ("Abar", "S*"), ("B", "long long"), ("n", "long long"),
            ("k", "long long")), _FIELD_PAIRS),
    Kernel("observable", "observable_forward", ("R", "S", "TILE"),
           (("V_S", "const S*"), ("D", "const S*"), ("t", "R*"), ("DV", "S*"), ("Q", "S*"), ("B", "long long"),
            ("K", "long long"), ("n", "long long"), ("r", "long long"), ("form", "long long")), _TILED),
    Kernel("observable", "observable_backward", ("R", "S"),
           (("V_S", "const S*"), ("DV", "const S*"), ("Q", "const S*"), ("tbar", "const R*"), ("Vbar_S", "S*"),
            ("W", "S*"), ("B", "long long"), ("K", "long long"), ("n", "long long"), ("r", "long long"),
            ("form", "long long")), _FIELD_PAIRS),
)}


def kernel_dir() -> pathlib.Path:
    """The CUDA sources: pmm_gpu/_kernels in an installed wheel, else <repo>/kernels."""
    here = pathlib.Path(__file__).resolve().parent
    for d in (here / "_kernels", here.parent / "kernels"):
        if d.is_dir():
            return d
    raise FileNotFoundError(f"CUDA kernel sources not found in {here / '_kernels'} or {here.parent / 'kernels'}")


_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.MULTILINE)


def family_source(family: str, root: pathlib.Path | None = None) -> str:
    """Text of ``<family>.cu`` with its local ``#include "x.cuh"`` lines expanded (once each)."""
    root = root or kernel_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:  # every header is `#pragma once`
            return ""
        seen.add(name)
        return _INCLUDE.sub(lambda m: expand(m.group(1)), (root / name).read_text())

    return expand(f"{family}.cu")


def family_kernels(family: str) -> list[Kernel]:
    return [k for k in KERNELS.values() if k.family == family]


def name_expressions(family: str) -> list[str]:
    """Every instantiation of the family, as the names passed to NVRTC."""
    return [k.expression(t) for k in family_kernels(family) for t in k.instances]


@functools.lru_cache(maxsize=None)
def _module(family: str, device_id: int):
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=family_source(family), options=("--std=c++17",),
                              name_expressions=name_expressions(family))


def template_args(dtypes) -> tuple[str, ...]:
    """Template arguments from dtypes (their C types) and ints (compile-time sizes such as a tile)."""
    return tuple(str(d) if isinstance(d, int) else CTYPES.get(np.dtype(d), "?") for d in dtypes)


def tile_for(n: int) -> int | None:
    """The smallest tile of ``TILES`` that holds an n×n matrix, or None when n is too large."""
    return next((t for t in TILES if n <= t), None)


def get_kernel(name: str, *dtypes):
    """The compiled instantiation of ``name`` whose template arguments are the C types of ``dtypes``
    (one dtype, or an int for a size parameter, per template parameter), on the current device;
    a ``cupy.RawKernel``, made once per (name, dtypes, device) and then reused: a launch costs no
    module lookup (``RawModule.get_function`` asks the driver for the function every time)."""
    import cupy

    return _kernel(name, dtypes, cupy.cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _kernel(name: str, dtypes: tuple, device_id: int):
    kernel = KERNELS[name]
    targs = template_args(dtypes)
    if targs not in kernel.instances:
        raise TypeError(f"{name} has no instantiation for dtypes {[str(np.dtype(d)) for d in dtypes]}")
    return _module(kernel.family, device_id).get_function(kernel.expression(targs))


# --- launch geometry: the one place grids and blocks are sized ---------------------------------------
def grid_for(work: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) of a grid-stride launch over ``work`` elements, one thread per element."""
    return (max(1, min(-(-work // BLOCK), MAX_GRID)),), (BLOCK,)


def threads_for(work: int, limit: int = BLOCK) -> int:
    """Block size for ``work`` parallel items in one block: whole warps, at least one, at most ``limit``."""
    return min(limit, max(32, -(-work // 32) * 32))


def block_per_item(items: int, work: int, threads: int | None = None) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) of a launch with one block per item (block-stride over ``items`` when they exceed
    MAX_GRID) and ``threads`` (default ``threads_for(work)``) threads sharing each item's ``work``."""
    return (max(1, min(items, MAX_GRID)),), (threads or threads_for(work),)
