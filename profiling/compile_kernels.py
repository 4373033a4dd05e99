"""Compile every kernel instantiation and name the ones that fail (step 1 of profiling/gpu_check.sh).

    python -m profiling.compile_kernels --json out.json         # CuPy on the current GPU (warms its cache)
    python -m profiling.compile_kernels --backend nvrtc         # no GPU: NVRTC from cuda-bindings, sm_90

Each family (kernels/<family>.cu) is compiled the way pmm_gpu/_cuda.py does it: one module with a name
expression for every instantiation of the signature table (``_cuda.KERNELS``). When a family fails,
each instantiation is compiled alone, so the report names the failing ones. With CuPy the compiled
modules land in CuPy's kernel cache, so the tests that follow do not compile again, and every
instantiation's attributes are recorded: registers, static shared and local memory per thread, the
largest block it can launch (the inputs of an occupancy estimate). The JSON list is rewritten after
every family, so a timeout keeps the families already compiled. Exit status 1 when anything failed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from pmm_gpu import _cuda

from . import env

ATTRIBUTES = ("num_regs", "shared_size_bytes", "local_size_bytes", "max_threads_per_block")


def compile_cupy(family: str, expressions: list[str]) -> dict[str, dict]:
    """{expression: attributes} of one module holding ``expressions`` (CuPy, current device)."""
    import cupy

    mod = cupy.RawModule(code=_cuda.family_source(family), options=("--std=c++17",), name_expressions=expressions)
    out = {}
    for expr in expressions:
        attrs = mod.get_function(expr).attributes
        out[expr] = {k: int(attrs[k]) for k in ATTRIBUTES if k in attrs}
    return out


def compile_nvrtc(family: str, expressions: list[str], arch: str = "sm_90") -> dict[str, dict]:
    """{expression: {}} when NVRTC (cuda-bindings) compiles ``expressions`` to a cubin for ``arch``."""
    from cuda.bindings import nvrtc

    def check(result):
        err, *rest = result
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"NVRTC: {err}")
        return rest[0] if rest else None

    prog = check(nvrtc.nvrtcCreateProgram(_cuda.family_source(family).encode(), f"{family}.cu".encode(), 0, [], []))
    try:
        for expr in expressions:
            check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()))
        opts = [f"-arch={arch}".encode(), b"--std=c++17"]
        if nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = b" " * check(nvrtc.nvrtcGetProgramLogSize(prog))
            check(nvrtc.nvrtcGetProgramLog(prog, log))
            raise RuntimeError(log.decode(errors="replace").strip("\0 ")[-2000:])
        check(nvrtc.nvrtcGetCUBINSize(prog))
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return {expr: {} for expr in expressions}


def compile_family(family: str, compile_fn) -> list[dict]:
    """Records of one family: one per instantiation, ok with its attributes, or failed with the error
    (the whole module first; on failure every instantiation alone)."""
    exprs = _cuda.name_expressions(family)
    t0 = time.perf_counter()
    try:
        done = compile_fn(family, exprs)
        secs = time.perf_counter() - t0
        return [{"family": family, "kernel": e, "ok": True, "seconds": round(secs, 2), **done[e]} for e in exprs]
    except Exception as err:  # noqa: BLE001 -- find the instantiations that fail
        first = f"{type(err).__name__}: {str(err)[:300]}"
    records = []
    for e in exprs:
        t1 = time.perf_counter()
        try:
            records.append({"family": family, "kernel": e, "ok": True, **compile_fn(family, [e])[e]})
        except Exception as err:  # noqa: BLE001
            records.append({"family": family, "kernel": e, "ok": False, "error": f"{type(err).__name__}: {str(err)[:600]}"})
        records[-1]["seconds"] = round(time.perf_counter() - t1, 2)
    if all(r["ok"] for r in records):  # alone each compiles: the combination is what fails
        records.append({"family": family, "kernel": "(whole module)", "ok": False, "error": first})
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("auto", "cupy", "nvrtc"), default="auto",
                    help="auto: CuPy when a GPU is usable, else NVRTC from cuda-bindings")
    ap.add_argument("--arch", default="sm_90", help="NVRTC target (--backend nvrtc)")
    ap.add_argument("--families", default=None, help="comma-separated subset (default: every family)")
    ap.add_argument("--json", default=None, help="write the records here, after every family")
    args = ap.parse_args(argv)
    backend = args.backend
    if backend == "auto":
        from pmm_gpu.backend import cuda_status

        backend = "cupy" if cuda_status()[0] else "nvrtc"
    fn = compile_cupy if backend == "cupy" else (lambda f, e: compile_nvrtc(f, e, args.arch))
    families = args.families.split(",") if args.families else sorted({k.family for k in _cuda.KERNELS.values()})
    rec = env.Recorder(args.json, {"backend": backend, "commit": env.commit()})
    for family in families:
        t0 = time.perf_counter()
        recs = rec.add(compile_family(family, fn))
        bad = [r["kernel"] for r in recs if not r["ok"]]
        print(f"{family:<18} {len(recs) - len(bad)}/{len(recs)} compiled in {time.perf_counter() - t0:5.1f} s"
              + (f"  FAILED: {', '.join(bad)}" if bad else ""), flush=True)
        for r in recs:
            if r["ok"] and "num_regs" in r:
                print(f"    {r['kernel']:<58} {r['num_regs']:3d} regs  {r['shared_size_bytes']:6d} B shared  "
                      f"{r['local_size_bytes']:4d} B local  <= {r['max_threads_per_block']} threads", flush=True)
            elif not r["ok"]:
                print(f"    FAILED {r['kernel']}: {r['error'][:400]}", flush=True)
    failed = [r for r in rec.records if not r["ok"]]
    print(f"# {len(rec.records) - len(failed)} of {len(rec.records)} instantiations compiled ({backend})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
