"""CPU emulation of the CUDA kernels (docs/DESIGN.md §4): the same .cu source, compiled by g++.

How it works:
1. ``tests/emu/cuda_emu.h`` maps the CUDA execution model onto threads (see that header).
2. From the signature table (``pmm_gpu._cuda.KERNELS``) this module writes one ``extern "C"`` wrapper
   per kernel instantiation: ``emu_<kernel>_<i>(cfg, gx, gy, gz, bx, by, bz, args...)``.
3. g++ -std=c++20 -O1 -fPIC -shared compiles emulation header + .cu + wrappers into one library per
   family and build variant, cached in ~/.cache/pmm_gpu_emu under the hash of all inputs.
4. ctypes loads it; ``Emulator.launch(kernel, template_args, grid, block, *args)`` checks each
   NumPy array against the C type of its parameter and runs the kernel.
5. ``sanitize="thread"`` builds with ThreadSanitizer; such a library only loads into a process that
   started with the TSan runtime preloaded, so run it in a subprocess with ``tsan_env()``.

Stricter than hardware where hardware leaves behaviour undefined (issue 12), every Emulator:
- poisons shared memory (byte ``poison``, default 0xFF: NaN, −1) before every block. The shared
  variables are the function-local statics of the kernel code (``__shared__`` is ``static``), found
  in the library's symbol table (``objdump -t``); g++ ignores a ``section`` attribute on the statics
  of function templates, so the symbol table, not a linker section, locates them;
- runs the blocks in an order shuffled with ``shuffle`` (a seed; 0: in order) and, with
  ``concurrent=k``, k blocks at a time: k copies of the library (distinct files, hence distinct
  static shared storage) each run every k-th block of the order in its own host thread;
- fails a block whose threads reach ``__syncthreads()`` from different call sites, or while some
  threads have exited: ``launch`` raises ``KernelError`` with the sites (never hangs);
- checks the launch limits of sm_80/sm_90: <= 1024 threads per block, and <= 48 KiB of static
  shared memory per kernel instantiation (``static_shared_bytes``: the sizes of its shared variables).
``fma=True`` builds with ``-mfma -ffp-contract=fast`` (and -fexpensive-optimizations, without which
-O1 never contracts), so a·b + c rounds once, as nvcc's default ``--fmad=true`` lets the GPU do; only
where the CPU has FMA (``cpu_has_fma``). Contraction choices may still differ from nvcc's.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import numpy as np

from pmm_gpu import _cuda
from pmm_gpu._cuda import CTYPES, KERNELS, Kernel

EMU_DIR = pathlib.Path(__file__).resolve().parent / "emu"
CACHE_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "pmm_gpu_emu"
# Hidden visibility and no STB_GNU_UNIQUE: the statics of one library copy never bind to another's.
CXXFLAGS = ("-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-fvisibility=hidden", "-fno-gnu-unique")
SANITIZE_FLAGS = {None: (), "thread": ("-fsanitize=thread", "-g")}
FMA_FLAGS = ("-mfma", "-ffp-contract=fast", "-fexpensive-optimizations")
POISON = 0xFF  # default poison byte: NaN in float and double, -1 in int
SHUFFLE = 12  # default seed of the block order
MAX_STATIC_SHARED = 48 * 1024  # bytes of static shared memory per block, sm_80 and sm_90

# Scalar C types a kernel may take, as ctypes; every pointer is passed as c_void_p.
SCALARS = {"long long": ctypes.c_longlong, "double": ctypes.c_double, "int": ctypes.c_int,
           "float": ctypes.c_float}
DTYPES = {**{c: d for d, c in CTYPES.items()},  # C element type -> numpy dtype
          "int": np.dtype(np.int32), "long long": np.dtype(np.int64)}


class KernelError(RuntimeError):
    """A launch the emulator refused or a block that failed (limits, barrier divergence)."""


class Config(ctypes.Structure):
    """emu::Config of cuda_emu.h."""

    _fields_ = [("seed", ctypes.c_uint64), ("poison", ctypes.c_int), ("part", ctypes.c_uint),
                ("parts", ctypes.c_uint)]


def cpu_has_fma() -> bool:
    """Whether this CPU executes FMA instructions (the ``fma`` flag of /proc/cpuinfo, else g++'s
    -march=native macros)."""
    try:
        flags = re.search(r"^flags\s*:(.*)$", pathlib.Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if flags:
            return "fma" in flags.group(1).split()
    except OSError:
        pass
    r = subprocess.run(["g++", "-march=native", "-dM", "-E", "-x", "c++", "-"], input="", capture_output=True,
                       text=True)
    return "#define __FMA__ 1" in r.stdout


def wrapper_source(source: pathlib.Path, kernels: list[Kernel]) -> str:
    """C++ of the emulation library: header, kernel source, one extern "C" launcher per instantiation,
    returning 0, or 1 with ``emu_last_error()`` set."""
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
            lines += [f'EMU_EXPORT int emu_{k.name}_{i}(const emu::Config* cfg, unsigned gx, unsigned gy, '
                      f'unsigned gz, unsigned bx, unsigned by, unsigned bz, {", ".join(params)}) {{',
                      f"  return emu::launch(*cfg, {{gx, gy, gz}}, {{bx, by, bz}}, "
                      f"[=] {{ {k.expression(targs)}({', '.join(call)}); }});",
                      "}", ""]
    return "\n".join(lines)


def _dim3(d) -> tuple[int, int, int]:
    d = (d,) if isinstance(d, int) else tuple(d)
    return tuple(d) + (1,) * (3 - len(d))


_SYMBOL = re.compile(r"^([0-9a-f]+) (.{7}) (\S+)\s+([0-9a-f]+)\s+(?:\.hidden |\.protected |\.internal )?(.+)$")
_LOCAL_STATIC = re.compile(r"^\w.*\)(?: const)?::\w+$")  # function(...)::variable
_NOT_KERNEL_CODE = ("std::", "__gnu_cxx::", "__cxxabiv1::", "emu::", "guard variable", "typeinfo", "vtable", "VTT")


def _nospace(s: str) -> str:
    return "".join(s.split())


def library_symbols(lib: pathlib.Path) -> tuple[list[tuple[str, int, int]], dict[str, int]]:
    """The shared variables of an emulation library, [(demangled name, symbol value, size)]: the
    function-local, zero-initialised (.bss) static objects of the kernel code (what ``__shared__``
    declares: it cannot have an initialiser); and {name: value} of its functions."""
    out = subprocess.run(["objdump", "-t", "-C", "-w", str(lib)], capture_output=True, text=True, check=True).stdout
    shared, functions = [], {}
    for line in out.splitlines():
        m = _SYMBOL.match(line)
        if not m:
            continue
        value, flags, section, size, name = int(m[1], 16), m[2], m[3], int(m[4], 16), m[5]
        if flags[6] == "F":
            functions[name] = value
        elif (flags[6] == "O" and section.split(".")[:2] == ["", "bss"] and _LOCAL_STATIC.match(name)
              and not name.startswith(_NOT_KERNEL_CODE)):
            shared.append((name, value, size))
    return shared, functions


class Emulator:
    """One kernel family compiled for the CPU. ``source`` may include headers from ``kernels/``.

    fma: contract a·b + c into FMAs (needs ``cpu_has_fma()``). poison: byte written over shared memory
    before every block (None: off). shuffle: seed of the block order (0: in order). concurrent: blocks
    run at once (library copies). defines: extra ``-D`` macros (e.g. ``PMM_INDEX64``).
    """

    def __init__(self, source: pathlib.Path, kernels: list[Kernel], *, sanitize: str | None = None,
                 fma: bool = False, poison: int | None = POISON, shuffle: int = SHUFFLE, concurrent: int = 1,
                 defines: tuple[str, ...] = ()):
        self.source, self.kernels, self.sanitize = pathlib.Path(source).resolve(), kernels, sanitize
        self.fma, self.poison, self.shuffle, self.concurrent = fma, poison, int(shuffle), int(concurrent)
        self.defines = tuple(defines)
        if sanitize == "thread" and "libtsan" not in os.environ.get("LD_PRELOAD", ""):
            raise RuntimeError("a ThreadSanitizer library loads only into a process started with the TSan "
                               "runtime preloaded: run it in a subprocess with env=tsan_env()")
        if fma and not cpu_has_fma():
            raise RuntimeError("fma=True needs a CPU with FMA instructions (no 'fma' flag in /proc/cpuinfo)")
        if not 1 <= self.concurrent <= 64:
            raise ValueError(f"concurrent must be in 1..64, got {concurrent}")
        self.path = self.build()
        symbols, functions = library_symbols(self.path)
        self.shared_vars = [(name, size) for name, _, size in symbols]
        self.libs = [self._load(p, symbols, functions) for p in self._copies()]
        self.lib = self.libs[0]

    def build(self) -> pathlib.Path:
        """Compile (or reuse from the cache) the library; returns its path."""
        code = wrapper_source(self.source, self.kernels)
        flags = [*CXXFLAGS, *SANITIZE_FLAGS[self.sanitize], *(FMA_FLAGS if self.fma else ()),
                 *(f"-D{d}" for d in self.defines), f"-I{EMU_DIR}", f"-I{_cuda.kernel_dir()}"]
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

    def _copies(self) -> list[pathlib.Path]:
        """The library and concurrent − 1 byte copies of it: dlopen maps a file once per process, so
        only distinct files give distinct static (shared-memory) storage."""
        paths = [self.path]
        for j in range(1, self.concurrent):
            copy = self.path.with_suffix(f".copy{j}.so")
            if not copy.exists():
                tmp = copy.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(self.path, tmp)
                os.replace(tmp, copy)
            paths.append(copy)
        return paths

    @staticmethod
    def _load(path: pathlib.Path, symbols, functions) -> ctypes.CDLL:
        """Load one copy and register its shared variables (absolute addresses) for poisoning."""
        lib = ctypes.CDLL(str(path))
        base = ctypes.cast(lib.emu_last_error, ctypes.c_void_p).value - functions["emu_last_error"]
        addr = np.array([base + value for _, value, _ in symbols], np.uint64)
        size = np.array([size for _, _, size in symbols], np.uint64)
        lib.emu_set_shared(ctypes.c_void_p(addr.ctypes.data), ctypes.c_void_p(size.ctypes.data), len(symbols))
        lib.emu_last_error.restype = ctypes.c_char_p
        return lib

    def static_shared_bytes(self, kernel: str, template_args) -> int:
        """Static shared memory of one instantiation: its shared variables, plus any declared in a
        helper function (not attributable to one kernel, so counted for every kernel)."""
        head = _nospace(next(k for k in self.kernels if k.name == kernel).expression(tuple(template_args)))
        total = 0
        for name, size in self.shared_vars:
            owner = _nospace(name[: name.rindex(")::")].split("(")[0])
            if owner == head or not any(owner == _nospace(k.expression(t)) for k in self.kernels
                                        for t in k.instances):
                total += size
        return total

    def launch(self, kernel: str, template_args, grid, block, *args):
        """Run ``kernel<template_args>`` over grid × block (ints or up-to-3-tuples) on NumPy arrays
        and Python scalars, in the order of the signature table. Raises KernelError when the
        emulator refuses the launch or a block fails."""
        k = next(k for k in self.kernels if k.name == kernel)
        targs = tuple(template_args)
        index = k.instances.index(targs)
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
        smem = self.static_shared_bytes(kernel, targs)
        if smem > MAX_STATIC_SHARED:
            raise KernelError(f"{k.expression(targs)} declares {smem} bytes of static shared memory; "
                              f"sm_80/sm_90 allow {MAX_STATIC_SHARED}")
        dims = [ctypes.c_uint(x) for x in (*_dim3(grid), *_dim3(block))]
        poison = -1 if self.poison is None else int(self.poison)
        errors = [None] * len(self.libs)

        def run(part: int):
            lib = self.libs[part]
            fn = getattr(lib, f"emu_{kernel}_{index}")
            fn.restype = ctypes.c_int
            cfg = Config(self.shuffle, poison, part, len(self.libs))
            if fn(ctypes.byref(cfg), *dims, *cargs):
                errors[part] = lib.emu_last_error().decode()

        if len(self.libs) == 1:
            run(0)
        else:  # ctypes releases the GIL: the copies run their blocks at the same time
            threads = [threading.Thread(target=run, args=(j,)) for j in range(len(self.libs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if failed := [e for e in errors if e]:
            raise KernelError(f"{k.expression(targs)}: {failed[0]}")


@functools.lru_cache(maxsize=None)
def family(name: str, **options) -> Emulator:
    """The emulation of ``kernels/<name>.cu`` with every kernel of its signature table (cached per
    options, those of ``Emulator``: e.g. ``family("jacobi", fma=True)``)."""
    return Emulator(_cuda.kernel_dir() / f"{name}.cu", _cuda.family_kernels(name), **options)


def kernel_loader(**options):
    """A ``get_kernel`` (below) whose kernels run on ``family(..., **options)``, e.g. the FMA build."""
    def get(name: str, *dtypes):
        targs = _cuda.template_args(dtypes)
        emu = family(KERNELS[name].family, **options)
        return lambda grid, block, args: emu.launch(name, targs, grid, block, *args)

    return get


def get_kernel(name: str, *dtypes):
    """Drop-in for ``pmm_gpu._cuda.get_kernel`` on NumPy arrays: lets the ``*_cuda`` launchers run on
    the CPU (monkeypatch it in), so their argument order, dtypes and grid sizes are tested too."""
    return kernel_loader()(name, *dtypes)


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
