"""Every kernel instantiation compiles for the GPUs we target (sm_80, sm_90), without a GPU.

Compilers: ``nvcc -cubin`` when nvcc is on PATH, NVRTC from ``cuda-bindings`` + ``nvidia-cuda-nvrtc``
when importable; every available one is tested. The source is exactly what ``cupy.RawModule``
compiles (``_cuda.family_source``). ptxas's register, spill and static shared memory counts per
instantiation are recorded (``record_property``, and .pytest_cache/d/pmm_gpu/resources-*.txt).
Resource checks (issue 12): no spills; static shared memory <= 48 KiB per block (sm_80/sm_90), and
equal to what the CPU emulator finds in its own build (tests/emulator.py ``static_shared_bytes``, which
enforces the limit on every emulated launch); registers × 256 threads (the launchers' largest block)
within the 64 K registers of a block.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import pytest

import emulator
from pmm_gpu import _cuda

ARCHS = ("sm_80", "sm_90")
MAX_STATIC_SHARED = 48 * 1024  # bytes per block, sm_80 and sm_90
REGISTERS_PER_BLOCK = 64 * 1024
MAX_LAUNCH_THREADS = 256  # the largest block any launcher uses (_cuda.BLOCK, jacobi MAX_THREADS, _vjp_block)
FAMILIES = sorted({k.family for k in _cuda.KERNELS.values()})


def _nvrtc_available() -> bool:
    return importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None


COMPILERS = [c for c, ok in (("nvcc", shutil.which("nvcc") is not None), ("nvrtc", _nvrtc_available())) if ok]


def compile_nvcc(family: str, arch: str, tmp_path) -> str:
    """ptxas log of ``nvcc -cubin``; nvcc has no name expressions, so instantiate explicitly."""
    inst = [f"template __global__ void {k.expression(t)}({', '.join(k.arg_types(t))});"
            for k in _cuda.family_kernels(family) for t in k.instances]
    src = tmp_path / f"{family}.cu"
    src.write_text(_cuda.family_source(family) + "\n" + "\n".join(inst) + "\n")
    cmd = ["nvcc", "-cubin", f"-arch={arch}", "-std=c++17", "-Xptxas", "-v", str(src), "-o", str(tmp_path / "k.cubin")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return r.stdout + r.stderr


def compile_nvrtc(family: str, arch: str, tmp_path) -> str:
    """ptxas log of NVRTC with every name expression, as cupy.RawModule compiles the family."""
    from cuda.bindings import nvrtc

    def check(result):
        err, *rest = result
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"NVRTC: {err}"
        return rest[0] if rest else None

    prog = check(nvrtc.nvrtcCreateProgram(_cuda.family_source(family).encode(), f"{family}.cu".encode(), 0, [], []))
    for expr in _cuda.name_expressions(family):
        check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()))
    opts = [f"-arch={arch}".encode(), b"--std=c++17", b"--ptxas-options=-v"]
    compiled = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
    log = b" " * check(nvrtc.nvrtcGetProgramLogSize(prog))
    check(nvrtc.nvrtcGetProgramLog(prog, log))
    log = log.decode(errors="replace").rstrip("\0 ")
    assert compiled == nvrtc.nvrtcResult.NVRTC_SUCCESS, log
    assert check(nvrtc.nvrtcGetCUBINSize(prog)) > 0
    check(nvrtc.nvrtcDestroyProgram(prog))
    return log


def resource_usage(log: str) -> dict[str, tuple[int, int, int, int]]:
    """{mangled kernel: (registers, spill-store bytes, spill-load bytes, static shared bytes)} from a
    ``ptxas -v`` log."""
    usage, name, spills = {}, None, (0, 0)
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            name = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spills = (int(m.group(1)), int(m.group(2)))
        elif (m := re.search(r"Used (\d+) registers", line)) and name:
            smem = re.search(r"(\d+) bytes smem", line)
            usage[name] = (int(m.group(1)), *spills, int(smem.group(1)) if smem else 0)
            name = None
    return usage


def _demangle(names: list[str]) -> list[str]:
    if not shutil.which("c++filt"):
        return names
    return subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("compiler", COMPILERS or [
    pytest.param("none", marks=pytest.mark.skip(reason="no CUDA compiler: nvcc not on PATH and cuda-bindings "
                                                       "(NVRTC) not importable; pip install pmm_gpu[test]"))])
def test_kernels_compile(compiler, family, arch, tmp_path, record_property, request):
    log = (compile_nvcc if compiler == "nvcc" else compile_nvrtc)(family, arch, tmp_path)
    usage = resource_usage(log)
    assert len(usage) == len(_cuda.name_expressions(family)), f"expected every instantiation in:\n{log}"
    names = _demangle(list(usage))
    rows = [f"{arch} {compiler} {regs:3d} regs, spills {st}/{ld} B, {smem:5d} B smem  {name}"
            for name, (regs, st, ld, smem) in zip(names, usage.values())]
    record_property(f"resources-{compiler}-{family}-{arch}", "\n".join(rows))
    (request.config.cache.mkdir("pmm_gpu") / f"resources-{compiler}-{family}-{arch}.txt").write_text("\n".join(rows) + "\n")
    assert all(st == ld == 0 for _, st, ld, _ in usage.values()), "\n".join(rows)
    assert all(smem <= MAX_STATIC_SHARED for *_, smem in usage.values()), "\n".join(rows)
    assert all(regs * MAX_LAUNCH_THREADS <= REGISTERS_PER_BLOCK for regs, *_ in usage.values()), "\n".join(rows)
    # the CPU emulator measures the same static shared memory (so it enforces the real limit)
    if not shutil.which("c++filt"):
        return
    emu = emulator.family(family)
    by_expression = {"".join(k.expression(t).split()): (k.name, t) for k in emu.kernels for t in k.instances}
    smem = {"".join(name.removeprefix("void ").split("(")[0].split()): u[3] for name, u in zip(names, usage.values())}
    assert smem.keys() == by_expression.keys()
    for expression, (kernel, targs) in by_expression.items():
        assert emu.static_shared_bytes(kernel, targs) == smem[expression], expression
    if family == "eigen_vjp":  # three 32×32 tiles of complex double: exactly the limit
        assert smem["eigh_vjp<double,cplx<double>,32>"] == MAX_STATIC_SHARED
