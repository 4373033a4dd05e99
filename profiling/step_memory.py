"""Peak host memory of one training step, with and without micro-batching (issue 12), on the CPU.

    python -m profiling.step_memory                       # both models, 2^21 samples, unsplit vs 2^16
    python -m profiling.step_memory --samples 262144 --micro-batch 8192 --n 8 --json out.json

Each measurement runs in a fresh interpreter (``python -m profiling.step_memory --child ...``): it makes
the data and the model, resets the RSS high-water mark (Linux ``/proc/self/clear_refs``), takes one
optimizer step over all samples (``fit(epochs=1, batch_size=N, micro_batch=m)``: forward, loss, reverse
mode, Adam) and reports the resident set before the step and its high-water mark during it. The step's
own memory is the difference. An address-space limit (``--limit-gb``) turns a step that would not fit
into a reported MemoryError instead of the kernel's OOM killer.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

MODELS = ("eigenvalue", "observable")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def child(kind: str, n: int, samples: int, micro_batch: int | None, seed: int = 0) -> dict:
    """One step in this process: {rss_before_mb, peak_mb, step_mb, seconds, loss}."""
    import pmm_gpu as pg

    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, (samples, 2))
    Y = (np.sin(2 * X[:, :1]) + 0.5 * X[:, 1:2] ** 2)
    if kind == "eigenvalue":
        model = pg.AffineEigenvaluePMM(n, 2, n_eig=1, device="cpu", seed=0)
    else:
        model = pg.AffineObservablePMM(n, 2, n_outputs=1, n_eig=min(n - 1, 2), device="cpu", seed=0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    hist = model.fit(X, Y, epochs=1, batch_size=samples, micro_batch=micro_batch, restore_best=False,
                     verbose=False)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    return {"rss_before_mb": round(before, 1), "peak_mb": round(peak, 1), "step_mb": round(peak - before, 1),
            "seconds": round(seconds, 2), "loss": hist["loss"][-1]}


def measure(kind: str, n: int, samples: int, micro_batch: int | None, limit_gb: float, timeout: int) -> dict:
    """``child`` in a fresh interpreter under an address-space limit; the record, or its error."""
    cmd = [sys.executable, "-m", "profiling.step_memory", "--child", kind, "--n", str(n), "--samples", str(samples),
           "--micro-batch", str(micro_batch or 0)]
    limit = int(limit_gb * 2**30)

    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    rec = {"model": kind, "n": n, "samples": samples, "micro_batch": micro_batch}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=set_limit, cwd=root)
    except subprocess.TimeoutExpired:
        return {**rec, "error": f"timeout after {timeout} s"}
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {**rec, "error": f"exit {r.returncode}: {last[:160]}"}
    return {**rec, **json.loads(r.stdout.strip().splitlines()[-1])}


def table(records: list[dict]) -> str:
    lines = ["| model | n | samples | micro_batch | RSS before step MB | peak RSS MB | step MB | step s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        mb = r["micro_batch"] or "none"
        if "error" in r:
            lines.append(f"| {r['model']} | {r['n']} | {r['samples']:,} | {mb} | – | – | {r['error']} | – |")
        else:
            lines.append(f"| {r['model']} | {r['n']} | {r['samples']:,} | {mb} | {r['rss_before_mb']:,.0f} | "
                         f"{r['peak_mb']:,.0f} | {r['step_mb']:,.0f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--n", type=int, default=4, help="matrix size (complex field, p = 2 features)")
    ap.add_argument("--samples", default=str(2**21), help="comma-separated sample counts (one step over all)")
    ap.add_argument("--micro-batch", default=f"0,{2**16}", help="comma-separated micro-batch sizes, 0 = unsplit")
    ap.add_argument("--limit-gb", type=float, default=12.0, help="address-space limit of each child")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per child")
    ap.add_argument("--json", default=None, help="write the records here (after every measurement)")
    ap.add_argument("--child", default=None, choices=MODELS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mb = int(args.micro_batch)
        print(json.dumps(child(args.child, args.n, int(args.samples), mb or None)))
        return 0
    records = []
    for kind in args.models.split(","):
        for samples in (int(s) for s in args.samples.split(",")):
            for mb in (int(m) for m in args.micro_batch.split(",")):
                records.append(measure(kind, args.n, samples, mb or None, args.limit_gb, args.timeout))
                print(json.dumps(records[-1]), file=sys.stderr, flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(records, f, indent=1)
    print(table(records))
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
