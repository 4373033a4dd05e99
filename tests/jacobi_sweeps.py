"""Sweeps the Jacobi kernel (kernels/jacobi.cu) needs per n and precision, measured on the CPU emulator.

The kernel runs through the g++ emulation harness (tests/emulator.py), so this needs no GPU and the
counts are what the GPU kernel does (same source, same arithmetic order per entry; with --fma, the
default where the CPU has FMA, a·b + c is contracted as nvcc's default --fmad=true allows, though
not necessarily at the same places). The emulator is the strict one: shared memory poisoned before
every block, blocks in a shuffled order. Default tolerance: off(A) <= eps·‖A‖_F. Also checks every
result against numpy.linalg.eigh while it counts: the worst eigenvalue, residual ‖MV − VΛ‖₂,
orthogonality ‖VᴴV − I‖₂ and eigenspace errors (tests/test_jacobi.py's measures).

    python tests/jacobi_sweeps.py [--batch 64] [--kinds random,degenerate] [--ns 2,3,...,32]
                                      [--no-fma] [--out profiling/results/jacobi-sweeps.md]
"""
from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import subprocess

import numpy as np

import emulator  # this script lives beside the emulator it drives: python tests/jacobi_sweeps.py
import test_jacobi  # matrix generators, the error measures and the emulated launch

ROOT = pathlib.Path(__file__).resolve().parent.parent

NS = (2, 3, 4, 5, 8, 12, 16, 24, 32)
PRECISIONS = (np.float32, np.float64)
CAP = 100


def measure(kind: str, n: int, field: str, real, batch: int, emu):
    rng = np.random.default_rng([n, test_jacobi.KINDS.index(kind), field == "complex", real == np.float64, 7])
    M = test_jacobi.batch(kind, rng, n, field, real, B=batch)
    w, V, sweeps = test_jacobi.run_emulated(M, max_sweeps=CAP, emu=emu)
    return sweeps, test_jacobi.errors(M, w, V)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64, help="matrices per (n, field, precision)")
    ap.add_argument("--kinds", default="random,degenerate", help="comma-separated test_jacobi.KINDS")
    ap.add_argument("--ns", default=",".join(map(str, NS)), help="comma-separated sizes n")
    ap.add_argument("--fma", action=argparse.BooleanOptionalAction, default=emulator.cpu_has_fma(),
                    help="FMA-contracting build (default: where the CPU has FMA)")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "profiling/results/jacobi-sweeps.md")
    args = ap.parse_args(argv)
    emu = emulator.family("jacobi", fma=args.fma)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "kernels", "tests/emu", "tests/emulator.py"],
                           cwd=ROOT).returncode
    commit += " + uncommitted kernel/emulator changes" if dirty else ""
    lines = ["# Jacobi sweeps per n (kernels/jacobi.cu, CPU emulator)", "",
             f"commit {commit}, {datetime.date.today()}, {platform.machine()}, numpy {np.__version__}; "
             f"emulator: {'FMA-contracting' if args.fma else 'no FMA'}, shared memory poisoned (0x{emu.poison:02X}), "
             f"blocks shuffled (seed {emu.shuffle}); {args.batch} matrices per cell; tol = eps of the precision "
             f"(off(A) <= eps·‖A‖_F); cap {CAP}. Cells: median / 90th percentile / max sweeps; the last columns "
             f"are the worst normwise errors of the cell vs numpy.linalg.eigh (max of eigenvalue, residual, "
             f"orthogonality, projector measures of tests/test_jacobi.py). Emulator counts — not GPU timings.",
             ""]
    worst = {}  # (kind, precision) -> {measure: max error}
    for kind in args.kinds.split(","):
        lines += [f"## {kind} matrices", "",
                  "| n | f32 real | f32 complex | f64 real | f64 complex | max error f32 | max error f64 |",
                  "|---|---|---|---|---|---|---|"]
        for n in (int(v) for v in args.ns.split(",")):
            cells, errs = [], {}
            for real in PRECISIONS:
                for field in ("real", "complex"):
                    sweeps, err = measure(kind, n, field, real, args.batch, emu)
                    ok = sweeps[sweeps >= 0]
                    fail = int((sweeps < 0).sum())
                    cells.append(f"{np.median(ok):.0f} / {np.percentile(ok, 90):.0f} / {ok.max()}"
                                 + (f" ({fail} unconverged)" if fail else ""))
                    errs[real] = max(errs.get(real, 0.0), max(err.values()))
                    w = worst.setdefault((kind, np.dtype(real).name), {})
                    for m, v in err.items():
                        w[m] = max(w.get(m, 0.0), v)
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {errs[np.float32]:.1e} | {errs[np.float64]:.1e} |")
            print(lines[-1], flush=True)
        lines.append("")
    lines += ["Worst error per measure (eigenvalue |λ − λ_LAPACK|/‖M‖₂, residual ‖MV − VΛ‖₂/‖M‖₂, "
              "orthogonality ‖VᴴV − I‖₂, eigenspace ‖P − P_LAPACK‖₂·gap/(10‖M‖₂)):", ""]
    for (kind, prec), w in worst.items():
        lines.append(f"- {kind}, {prec}: " + ", ".join(f"{m} {v:.1e}" for m, v in w.items()))
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
