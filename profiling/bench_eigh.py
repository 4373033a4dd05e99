"""The eigensolvers side by side (issue 7): pmm_gpu's Jacobi kernel against cupy.linalg.eigh (cuSOLVER).

    python profiling/bench_eigh.py --quick --json out.json            # on the GPU (profiling/gpu_check.sh)
    python profiling/bench_eigh.py --device cpu --quick               # plumbing check without a GPU

Case E: eigh-only matrices/s of random complex Hermitian batches, n = 8, 16, 32, batch 2^20, float32
and float64 (complex64/complex128), for each solver of ``backend.eigh(M, solver)``. Each timed call
is preceded by one warm-up call (compilation); the median of ``repeats`` calls is reported. Correctness
while timing: the Jacobi eigenvalues of the first 256 matrices are compared with cuSOLVER's, and the
kernel's non-convergence count is reported (both must be clean, or the exit status is 1).
Cases A–C: end-to-end training and inference samples/s of profiling/bench.py's cases (its
``run_case``, unchanged), once per solver; the final losses of the solvers must agree (same start,
same batches) to bench.LOSS_RTOL.

cuSOLVER at n = 32 runs at ~10⁴–10⁵ matrices/s, so ``--cusolver-batch`` (default 2^16 with --quick)
caps its batch to keep the run short; matrices/s hardly depend on the batch at that size, and every
record carries the batch it was measured at. On the CPU the NumPy backend answers every solver with
LAPACK: the Jacobi kernel is skipped there (a note says so) and "cusolver" is LAPACK, labelled "numpy".
The result (markdown table, JSON records) is what flips ``backend.AUTO_JACOBI_MAX_N``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # run from a checkout without installing

import bench  # noqa: E402  (profiling/bench.py: cases, run_case, stats, environment)
from pmm_gpu.ops import jacobi  # noqa: E402
from pmm_gpu.backend import cuda_status, get_backend  # noqa: E402

SIZES = (8, 16, 32)
CHECK_TOL = {"float32": 1e-5, "float64": 1e-12}  # Jacobi vs cuSOLVER eigenvalues, relative to max |λ|


def random_hermitian(xp, B: int, n: int, real: str, seed: int):
    """(B, n, n) complex Hermitian, generated where it is used (2^20 × 32² complex128 is 16 GiB)."""
    if xp is np:
        rng = np.random.default_rng(seed)
        normal = lambda: rng.standard_normal((B, n, n), dtype=real)  # noqa: E731
    else:
        rs = xp.random.RandomState(seed)
        normal = lambda: rs.standard_normal((B, n, n), dtype=real)  # noqa: E731
    A = normal() + 1j * normal()
    return A + xp.conj(A.swapaxes(1, 2))


def time_calls(be, fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of fn(), after one warm-up call; synchronised around each."""
    out = []
    for rep in range(repeats + 1):
        be.synchronize()
        t0 = time.perf_counter()
        fn()
        be.synchronize()
        if rep:
            out.append(time.perf_counter() - t0)
    return out


def run_eigh(device: str, real: str, cfg, notes) -> tuple[list[dict], list[str], bool]:
    """Case E for one precision: records, check lines, ok."""
    be = get_backend(device)
    xp = be.xp
    solvers = ["cusolver", "jacobi"] if device == "cuda" else ["cusolver"]
    if device != "cuda":
        notes.append(f"case E/{device}: jacobi skipped (the kernel runs on CUDA only; the NumPy backend uses LAPACK)")
    records, checks, ok = [], [], True
    for n in cfg.sizes:
        M = random_hermitian(xp, cfg.batch, n, real, seed=n)
        w_ref = None
        for solver in solvers:
            B = min(cfg.batch, cfg.cusolver_batch) if solver == "cusolver" else cfg.batch
            Ms = M[:B]
            failures = xp.zeros((), np.int64)
            result = {}

            def call():
                result["w"] = be.eigh(Ms, solver, failures)[0]

            times = time_calls(be, call, cfg.repeats)
            failed = int(failures)
            w = result.pop("w")[:256]
            if w_ref is None:
                w_ref = w
            k = min(len(w), len(w_ref))
            w, w_ref = w[:k], w_ref[:k]
            diff = float(xp.abs(w - w_ref).max() / max(float(xp.abs(w_ref).max()), 1e-300))
            good = failed == 0 and diff <= CHECK_TOL[real]
            ok &= good
            name = solver if device == "cuda" else "numpy"
            records.append({"case": "E", "engine": f"pmm_gpu/{name}", "solver": name, "device": device,
                            "dtype": real, "metric": "eigh_matrices_per_s", **bench.stats([B / t for t in times]),
                            "n": n, "batch": B, "not_converged": failed, "max_rel_diff_vs_cusolver": diff})
            if solver == "jacobi":
                checks.append(f"check E n={n} {real}: jacobi vs cusolver eigenvalues {diff:.1e}, "
                              f"{failed} not converged (of {B * (cfg.repeats + 1)}) {'ok' if good else 'MISMATCH'}")
            del Ms, result
        del M
    return records, checks, ok


def run_train(device: str, cfg, notes) -> tuple[list[dict], list[str], bool]:
    """Cases A–C with each solver through bench.run_case (pmm_gpu only); the final losses must agree."""
    solvers = ["cusolver", "jacobi"] if device == "cuda" else ["cusolver"]
    if device != "cuda":
        notes.append(f"cases {','.join(cfg.cases)}/{device}: jacobi skipped (CUDA only)")
    records, checks, ok = [], [], True
    for c in cfg.cases:
        losses = {}
        for solver in solvers:
            case = dataclasses.replace(bench.CASES[c], model_kw={**bench.CASES[c].model_kw, "eigh_solver": solver})
            name = solver if device == "cuda" else "numpy"
            for r in bench.run_case(case, device, ["pmm_gpu"], cfg, notes):
                records.append({**r, "engine": f"pmm_gpu/{name}", "solver": name})
                if r["metric"] == "final_loss":
                    losses[solver] = r["median"]
        if len(losses) == 2:
            rel = abs(losses["jacobi"] - losses["cusolver"]) / max(abs(losses["cusolver"]), 1e-300)
            good = rel <= bench.LOSS_RTOL[cfg.dtype]
            ok &= good
            checks.append(f"check {c}/{device} {cfg.dtype}: final loss jacobi {losses['jacobi']:.12g} vs cusolver "
                          f"{losses['cusolver']:.12g}: relative difference {rel:.1e} {'ok' if good else 'MISMATCH'}")
    return records, checks, ok


def table(records: list[dict]) -> str:
    fmt = lambda r: f"{r['median']:,.0f} ({r['min']:,.0f}–{r['max']:,.0f})"  # noqa: E731
    lines = ["| case | device | dtype | n | batch | solver | matrices or samples/s, median (min–max) | jacobi / cusolver |",
             "|" + "---|" * 8]
    for r in records:
        if r["metric"] not in ("eigh_matrices_per_s", "train_samples_per_s", "infer_samples_per_s"):
            continue
        key = lambda q: (q["case"], q["device"], q["dtype"], q.get("n"), q["metric"])  # noqa: E731
        ref = next((q for q in records if q["solver"] == "cusolver" and key(q) == key(r)), None)
        ratio = f"{r['median'] / ref['median']:.2f}×" if r["solver"] == "jacobi" and ref else ""
        what = r["metric"].replace("_samples_per_s", "")
        n = r.get("n") or bench.CASES[r["case"]].n
        lines.append(f"| {r['case']}{'' if r['case'] == 'E' else ' ' + what} | {r['device']} | {r['dtype']} | {n} | "
                     f"{r.get('batch', '')} | {r['solver']} | {fmt(r)} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when usable, else cpu")
    ap.add_argument("--cases", default="E,A,B,C", help="comma-separated subset of E,A,B,C")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help=f"case E matrix sizes (<= {jacobi.NMAX})")
    ap.add_argument("--batch", type=int, default=None, help="case E batch (default 2^20 on cuda; 2^12 on cpu, 2^9 with --quick)")
    ap.add_argument("--cusolver-batch", type=int, default=None,
                    help="cap on cuSOLVER's case E batch (default: --batch; 2^16 with --quick)")
    ap.add_argument("--quick", action="store_true", help="few repeats, short training runs (bench.py --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls or runs (default 5, quick 2)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--json", default=None, help="write the records (a JSON list) to this file")
    args = ap.parse_args(argv)
    cuda_ok, why = cuda_status()
    device = args.device or ("cuda" if cuda_ok else "cpu")
    if device == "cuda" and not cuda_ok:
        ap.error(f"--device cuda: {why}")
    cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c != "E" and c not in ("A", "B", "C"):
            ap.error(f"unknown case {c!r} (E, A, B, C)")
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(not 1 <= s <= jacobi.NMAX for s in sizes):
        ap.error(f"--sizes must lie in 1..{jacobi.NMAX}")
    batch = args.batch or (2**20 if device == "cuda" else 2**9 if args.quick else 2**12)
    repeats = args.repeats or (2 if args.quick else 5)
    meta = {"commit": bench.commit(), "host": bench.host()}
    print(f"# pmm_gpu bench_eigh | {time.strftime('%Y-%m-%d %H:%M')} | commit {meta['commit']} | {meta['host']}",
          flush=True)
    records, checks, notes, ok = [], [], [], True
    t_start = time.perf_counter()

    def dump():  # after every section, so a run cut short by a timeout still leaves its records
        if args.json:
            with open(args.json, "w") as f:
                json.dump([{**r, **meta} for r in records], f, indent=1)

    for real in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        cfg = types.SimpleNamespace(sizes=sizes, batch=batch, cusolver_batch=args.cusolver_batch or
                                    (min(batch, 2**16) if args.quick else batch), repeats=repeats,
                                    cases=[c for c in cases if c != "E"])
        if "E" in cases:
            t0 = time.perf_counter()
            recs, chk, good = run_eigh(device, real, cfg, notes)
            records, checks, ok = records + recs, checks + chk, ok and good
            print(f"# case E {real} on {device}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            dump()
        if cfg.cases:
            bench_cfg = bench.Config(types.SimpleNamespace(quick=args.quick, dtype=real, lr=args.lr, repeats=repeats,
                                                           epochs=args.epochs, samples=args.samples))
            bench_cfg.cases = cfg.cases
            t0 = time.perf_counter()
            recs, chk, good = run_train(device, bench_cfg, notes)
            records, checks, ok = records + recs, checks + chk, ok and good
            print(f"# cases {','.join(cfg.cases)} {real} on {device}: {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
            dump()
    dump()
    records = [{**r, **meta} for r in records]
    print(table(records))
    print("\n".join(checks + [f"note: {n}" for n in dict.fromkeys(notes)]))
    print(f"\n# total {time.perf_counter() - t_start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
