"""The eigensolvers side by side (issue 7): pmm_gpu's Jacobi kernel against cupy.linalg.eigh (cuSOLVER).

    python -m profiling.bench_eigh --quick --json out.json            # on the GPU (profiling/gpu_check.sh)
    python -m profiling.bench_eigh --device cpu --quick               # plumbing check without a GPU

Case E (profiling/eigh_case.py ``run_eigh``): eigh-only matrices/s of random complex Hermitian batches,
n = 8, 16, 32, float32 and float64 (complex64/complex128), for each solver of ``backend.eigh(M, solver)``;
batch 2^20 on cuda (2^16 with --quick), cuSOLVER capped by ``--cusolver-batch`` (default: the batch;
2^14 with --quick: at n = 32 it runs at ~10⁴–10⁵ matrices/s, and matrices/s hardly depend on the batch
at that size; every record carries the batch it was measured at). Each timed call follows one warm-up
call (compilation); medians of ``repeats`` calls. Correctness while timing: the Jacobi eigenvalues of
the first 256 matrices against cuSOLVER's, and both solvers' failure counts on the device (Jacobi
non-convergence, cuSOLVER's sampled residual probe) must be clean, or the exit status is 1.
Cases A–C: end-to-end training and inference samples/s of profiling/bench.py's cases (its ``run_case``),
once per solver; the final losses of the solvers must agree (same start, same batches) to
report.LOSS_RTOL. On the CPU the NumPy backend answers every solver with LAPACK: the Jacobi kernel is
skipped there (a note says so) and "cusolver" is LAPACK, labelled "numpy". The JSON file is rewritten
after every n and every case. The result (markdown table, JSON records) is what flips
``backend.AUTO_JACOBI_MAX_N`` and ``backend.FUSED_ASSEMBLY_MAX_P``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import types

from pmm_gpu.backend import cuda_status
from pmm_gpu.ops import jacobi

from . import bench, eigh_case, env, report

SIZES = (8, 16, 32)


class EighConfig(bench.Config):
    """bench.Config with one case-E batch per n, cuSOLVER capped at ``cusolver_batch``."""

    def __init__(self, args, dtype: str):
        super().__init__(types.SimpleNamespace(quick=args.quick, dtype=dtype, lr=args.lr, repeats=args.repeats,
                                               epochs=args.epochs, samples=args.samples))
        self.repeats = args.repeats or (2 if args.quick else 5)
        self.eigh_sizes, self.batch = args.sizes, args.batch
        self.eigh_caps = {"cusolver": args.cusolver_batch}

    def eigh_batches(self, n: int, device: str):
        return [self.batch]


def run_train(device: str, cfg, cases, notes) -> tuple[list[dict], list[str], bool]:
    """Cases A–C with each solver through bench.run_case (pmm_gpu only); the final losses must agree."""
    solvers = ["cusolver", "jacobi"] if device == "cuda" else ["cusolver"]
    if device != "cuda":
        notes.append(f"cases {','.join(cases)}/{device}: jacobi skipped (CUDA only)")
    records, checks, ok = [], [], True
    for c in cases:
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
            good = rel <= report.LOSS_RTOL[cfg.dtype]
            ok &= good
            checks.append(f"check {c}/{device} {cfg.dtype}: final loss jacobi {losses['jacobi']:.12g} vs cusolver "
                          f"{losses['cusolver']:.12g}: relative difference {rel:.1e} {'ok' if good else 'MISMATCH'}")
    return records, checks, ok


def table(records: list[dict]) -> str:
    """Case E (``report.eigh_table``, jacobi / cusolver) and cases A–C per solver."""
    eigh = [r for r in records if r["case"] == "E"]
    lines = [report.eigh_table(eigh, reference="pmm_gpu/cusolver")] if eigh else []
    rows = [r for r in records if r["case"] != "E" and r["metric"] in ("train_samples_per_s", "infer_samples_per_s")]
    if rows:
        lines += ["", "| case | device | dtype | solver | samples/s, median (min–max) | jacobi / cusolver |",
                  "|" + "---|" * 6]
        for r in rows:
            key = (r["case"], r["device"], r["dtype"], r["metric"])
            ref = next((q for q in rows if q["solver"] == "cusolver" and (q["case"], q["device"], q["dtype"],
                                                                          q["metric"]) == key), None)
            ratio = f"{r['median'] / ref['median']:.2f}×" if r["solver"] == "jacobi" and ref else ""
            what = r["metric"].replace("_samples_per_s", "")
            lines.append(f"| {r['case']} {what} | {r['device']} | {r['dtype']} | {r['solver']} | "
                         f"{r['median']:,.0f} ({r['min']:,.0f}–{r['max']:,.0f}) | {ratio} |")
    return "\n".join(lines)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when usable, else cpu")
    ap.add_argument("--cases", default="E,A,B,C", help="comma-separated subset of E,A,B,C")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help=f"case E matrix sizes (<= {jacobi.NMAX})")
    ap.add_argument("--batch", type=int, default=None,
                    help="case E batch (cuda: 2^20, 2^16 with --quick; cpu: 2^12, 2^9 with --quick)")
    ap.add_argument("--cusolver-batch", type=int, default=None,
                    help="cap on cuSOLVER's case E batch (default: --batch; 2^14 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small batches, few repeats, short training runs")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls or runs (default 5, quick 2)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--json", default=None, help="write the records (a JSON list) here, after every section")
    args = ap.parse_args(argv)
    cuda_ok, why = cuda_status()
    args.device = args.device or ("cuda" if cuda_ok else "cpu")
    if args.device == "cuda" and not cuda_ok:
        ap.error(f"--device cuda: {why}")
    args.cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    if any(c not in ("E", "A", "B", "C") for c in args.cases):
        ap.error(f"unknown case in {args.cases} (E, A, B, C)")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if any(not 1 <= s <= jacobi.NMAX for s in args.sizes):
        ap.error(f"--sizes must lie in 1..{jacobi.NMAX}")
    on_gpu = args.device == "cuda"
    args.batch = args.batch or ((2**16 if args.quick else 2**20) if on_gpu else (2**9 if args.quick else 2**12))
    args.cusolver_batch = args.cusolver_batch or (min(args.batch, 2**14) if args.quick else args.batch)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    rec = env.Recorder(args.json, {"commit": env.commit(), "host": env.host()})
    print(f"# pmm_gpu bench_eigh | {time.strftime('%Y-%m-%d %H:%M')} | commit {rec.meta['commit']} | "
          f"{rec.meta['host']}", flush=True)
    checks, notes, ok, t_start = [], [], True, time.perf_counter()
    try:
        for real in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
            cfg = EighConfig(args, real)
            if "E" in args.cases:
                t0 = time.perf_counter()
                _, chk, good = eigh_case.run_eigh(args.device, cfg, notes, ["pmm_gpu"], ("cusolver", "jacobi"),
                                                  on_record=rec.add)
                checks, ok = checks + chk, ok and good
                print(f"# case E {real} on {args.device}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            cases = [c for c in args.cases if c != "E"]
            if cases:
                t0 = time.perf_counter()
                recs, chk, good = run_train(args.device, cfg, cases, notes)
                rec.add(recs)
                checks, ok = checks + chk, ok and good
                print(f"# cases {','.join(cases)} {real} on {args.device}: {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # timeout -s INT: report what was measured
        print("# interrupted: the tables hold the sections measured so far", file=sys.stderr, flush=True)
        ok = None
    print(table(rec.records))
    print("\n".join(checks + [f"note: {n}" for n in dict.fromkeys(notes)]))
    print(f"\n# total {time.perf_counter() - t_start:.1f} s")
    return 130 if ok is None else (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
