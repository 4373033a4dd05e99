"""CPU emulation of the CUDA kernels (DESIGN.md §4): the same .cu source, compiled by g++.

How it works:
1. ``tests/emu/cuda_emu.h`` maps the CUDA execution model onto threads (see that header).
2. From the signature table (``pmm_gpu._cuda.KERNELS``) this module writes one ``extern "C"`` wrapper
   per kernel instantiation: ``emu_<kernel>_<i>(gx, gy, gz, bx, by, bz, args...)``.
3. g++ -std=c++20 -O1 -fPIC -shared compiles emulation header + .cu + wrappers into one library per
   family, cached in ~/.cache/pmm_gpu_emu under the hash of all inputs.
4. ctypes loads it; ``Emulator.launch(kernel, template_args, grid, block, *args)`` checks each
   NumPy array against the C type of its parameter and runs the kernel.
5. ``sanitize="thread"`` builds with ThreadSanitizer; such a library only loads into a process that
   started with the TSan runtime preloaded, so run it in a subprocess with ``tsan_env()``.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

from pmm_gpu import _cuda
from pmm_gpu._cuda import CTYPES, KERNELS, Kernel

EMU_DIR = pathlib.Path(__file__).resolve().parent / "emu"
CACHE_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "pmm_gpu_emu"
CXXFLAGS = ("-std=c++20", "-O1", "-fPIC", "-shared", "-pthread")
SANITIZE_FLAGS = {None: (), "thread": ("-fsanitize=thread", "-g")}

# Scalar C types a kernel may take, as ctypes; every pointer is passed as c_void_p.
SCALARS = {"long long": ctypes.c_longlong, "double": ctypes.c_double, "int": ctypes.c_int,
           "float": ctypes.c_float}
DTYPES = {**{c: d for d, c in CTYPES.items()},  # C element type -> numpy dtype
          "int": np.dtype(np.int32), "long long": np.dtype(np.int64)}


def wrapper_source(source: pathlib.Path, kernels: list[Kernel]) -> str:
    """C++ of the emulation library: header, kernel source, one extern "C" launcher per instantiation."""
    lines = ['#include "cuda_emu.h"', f'#include "{source}"', ""]
    for k in kernels:
        for i, targs in enumerate(k.instances):
            params, call = [], []
            for (name, ctype), concrete in zip(k.args, k.arg_types(targs)):
                if ctype.endswith("*"):
                    params.append(f"void* {name}")
                    call.append(f"({concrete}){name}")
                else:
                    if ctype not in SCALARS:
                        raise TypeError(f"{k.name}: scalar argument {name} has unsupported type {ctype!r}")
                    params.append(f"{ctype} {name}")
                    call.append(name)
            lines += [f'extern "C" void emu_{k.name}_{i}(unsigned gx, unsigned gy, unsigned gz, '
                      f'unsigned bx, unsigned by, unsigned bz, {", ".join(params)}) {{',
                      f"  emu::launch({{gx, gy, gz}}, {{bx, by, bz}}, "
                      f"[=] {{ {k.expression(targs)}({', '.join(call)}); }});",
                      "}", ""]
    return "\n".join(lines)


def _dim3(d) -> tuple[int, int, int]:
    d = (d,) if isinstance(d, int) else tuple(d)
    return tuple(d) + (1,) * (3 - len(d))


class Emulator:
    """One kernel family compiled for the CPU. ``source`` may include headers from ``kernels/``."""

    def __init__(self, source: pathlib.Path, kernels: list[Kernel], *, sanitize: str | None = None):
        self.source, self.kernels, self.sanitize = pathlib.Path(source).resolve(), kernels, sanitize
        if sanitize == "thread" and "libtsan" not in os.environ.get("LD_PRELOAD", ""):
            raise RuntimeError("a ThreadSanitizer library loads only into a process started with the TSan "
                               "runtime preloaded: run it in a subprocess with env=tsan_env()")
        self.path = self.build()
        self.lib = ctypes.CDLL(str(self.path))

    def build(self) -> pathlib.Path:
        """Compile (or reuse from the cache) the library; returns its path."""
        code = wrapper_source(self.source, self.kernels)
        flags = [*CXXFLAGS, *SANITIZE_FLAGS[self.sanitize], f"-I{EMU_DIR}", f"-I{_cuda.kernel_dir()}"]
        headers = sorted([*EMU_DIR.glob("*.h"), *_cuda.kernel_dir().glob("*.cuh")])
        inputs = [code, " ".join(flags), self.source.read_text(), *(h.read_text() for h in headers)]
        key = hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:20]
        lib = CACHE_DIR / f"{self.source.stem}-{key}.so"
        if lib.exists():
            return lib
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cpp, tmp = lib.with_suffix(f".{os.getpid()}.cpp"), lib.with_suffix(f".{os.getpid()}.so")
        cpp.write_text(code)
        try:
            subprocess.run(["g++", *flags, str(cpp), "-o", str(tmp)], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"g++ failed to build the emulation of {self.source}:\n{e.stderr}") from None
        finally:
            cpp.unlink()
        os.replace(tmp, lib)  # atomic: concurrent test processes never load a half-written file
        return lib

    def launch(self, kernel: str, template_args, grid, block, *args):
        """Run ``kernel<template_args>`` over grid × block (ints or up-to-3-tuples) on NumPy arrays
        and Python scalars, in the order of the signature table."""
        k = next(k for k in self.kernels if k.name == kernel)
        targs = tuple(template_args)
        fn = getattr(self.lib, f"emu_{kernel}_{k.instances.index(targs)}")
        if len(args) != len(k.args):
            raise TypeError(f"{kernel} takes {len(k.args)} arguments, got {len(args)}")
        cargs = []
        for (name, ctype), concrete, a in zip(k.args, k.arg_types(targs), args):
            if ctype.endswith("*"):
                elem = concrete.removeprefix("const ").removesuffix("*").strip()
                if not isinstance(a, np.ndarray) or a.dtype != DTYPES[elem] or not a.flags.c_contiguous:
                    raise TypeError(f"{kernel}: {name} must be a C-contiguous {DTYPES[elem]} array, got {a!r:.80}")
                if not ctype.startswith("const") and not a.flags.writeable:
                    raise TypeError(f"{kernel}: {name} is written and must be writeable")
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                cargs.append(SCALARS[ctype](a))
        fn.restype = None
        fn(*(ctypes.c_uint(x) for x in (*_dim3(grid), *_dim3(block))), *cargs)


@functools.lru_cache(maxsize=None)
def family(name: str) -> Emulator:
    """The emulation of ``kernels/<name>.cu`` with every kernel of its signature table (cached)."""
    return Emulator(_cuda.kernel_dir() / f"{name}.cu", _cuda.family_kernels(name))


def get_kernel(name: str, *dtypes):
    """Drop-in for ``pmm_gpu._cuda.get_kernel`` on NumPy arrays: lets the ``*_cuda`` launchers run on
    the CPU (monkeypatch it in), so their argument order, dtypes and grid sizes are tested too."""
    targs = _cuda.template_args(dtypes)
    emu = family(KERNELS[name].family)
    return lambda grid, block, args: emu.launch(name, targs, grid, block, *args)


def tsan_env() -> dict[str, str]:
    """Environment for a subprocess that loads ``sanitize="thread"`` libraries: the TSan runtime
    preloaded, and a data race turned into exit status 66. Start ``sys.executable`` directly
    (a shell-script shim such as pyenv's would itself run under the preload)."""
    runtime = subprocess.run(["g++", "-print-file-name=libtsan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return {**os.environ, "LD_PRELOAD": runtime, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"}


def run_under_tsan(module: str, call: str = "tsan_check()", timeout: int = 600) -> subprocess.CompletedProcess:
    """``module.call`` (a test module under tests/) in a fresh interpreter with the TSan runtime
    preloaded; exit status 0 when it returns true, 1 when false, 66 on a reported data race."""
    tests = pathlib.Path(__file__).resolve().parent
    env = {**tsan_env(), "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    code = f"import sys, {module} as t; sys.exit(0 if t.{call} else 1)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


_SIGNATURE = re.compile(r"template\s*<([^>]*)>\s*__global__\s+void\s+(\w+)\s*\(([^)]*)\)")


def parse_signatures(text: str) -> dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]]:
    """The ``template <...> __global__ void name(...)`` kernels of a CUDA source:
    {name: (template parameter names, ((arg name, C type), ...))}, comments and __restrict__ removed."""
    text = re.sub(r"//[^\n]*", "", text)
    out = {}
    for tparams, name, params in _SIGNATURE.findall(text):
        template = tuple(p.split()[-1] for p in tparams.split(","))
        args = []
        for p in params.split(","):
            p = " ".join(p.replace("__restrict__", "").replace("*", "* ").split())
            ctype, arg = p.rsplit(" ", 1)
            args.append((arg, ctype.replace(" *", "*")))
        out[name] = (template, tuple(args))
    return out


def route_kernels_to_emulator(monkeypatch):
    """Make every ``*_cuda`` launcher run its kernel in the emulator (on NumPy arrays)."""
    monkeypatch.setattr(_cuda, "get_kernel", get_kernel)


def cuda_backend_on_numpy(kernels: bool = True):
    """The CUDA backend's dispatch (eigensolver choice, fused Jacobi paths and, with ``kernels``, every
    kernel launcher; else the NumPy references) on NumPy arrays; with ``route_kernels_to_emulator`` the
    kernels run in the emulator."""
    from pmm_gpu import backend

    be = object.__new__(backend.CupyBackend)  # its __init__ imports CuPy
    be.xp, be.to_numpy, be.synchronize = np, np.asarray, lambda: None
    be.describe = lambda: {"backend": be.name, "device": "cpu"}
    be.ops = backend.CUDA_OPS if kernels else backend.NUMPY_OPS
    be.name = "emulated-cuda" if kernels else "emulated-cuda-eigh"
    return be
