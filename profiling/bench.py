"""pmm_gpu measured side by side against its peers on the standard cases of docs/DESIGN.md §5.

    python -m profiling.bench --quick --json out.json          # every case, every engine available
    python -m profiling.bench --cases A,C --engines pmm_gpu,torch --device cpu

(from the repository root). Engines: pmm_gpu (NumPy on cpu, CuPy on cuda), torch
(profiling/torch_pmm.py: torch.linalg.eigh, autograd, torch.optim.Adam) and pypmm
(profiling/pypmm_peer.py: the authors' JAX library ``parametricmatrixmodels``, its Model.train and
complex Adam; skipped with a note when it is not importable; it starts from the same parameters, but
its optimizer and batch order differ, so only its initial loss is checked against pmm_gpu's). All
engines of a case get the same data, shapes, dtype and initial parameters (pmm_gpu's, copied into the
peers), run in one process, interleaved repeat by repeat. Each engine first runs one warm-up epoch
(reported as ``warmup_s``: compilation, first-call allocations); then ``repeats`` timed runs of
``epochs`` whole epochs (forward + backward + Adam) each. After them, each engine's loss on the full
training set is reported and compared (``loss check``, profiling/report.py). Case E
(profiling/eigh_case.py, shared with profiling/bench_eigh.py) times the eigensolvers alone. The JSON file is rewritten after every
case, so a run stopped by a timeout keeps what it measured. See profiling/README.md for the records.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import pmm_gpu
from pmm_gpu.backend import cuda_status
from pmm_gpu.losses import get_loss

from . import eigh_case, env, pypmm_peer, report

ENGINES = report.ENGINES
E_SIZES = (8, 16, 32, 64)
E_BATCHES = tuple(2**e for e in (14, 16, 18, 20))


@dataclass
class Case:
    """One row of docs/DESIGN.md §5: model kind and shapes; N training samples, mini-batches of ``batch``."""

    name: str
    kind: str  # "eigenvalue" (AE-PMM) or "observable" (AO-PMM)
    n: int
    p: int
    k: int  # k (AE) or r (AO)
    outputs: int
    batch: int = 1024
    loss: str = "mse"
    model_kw: dict = field(default_factory=dict)


CASES = {
    "A": Case("A", "eigenvalue", 8, 2, 1, 1, model_kw={"which": "SA"}),
    "B": Case("B", "observable", 8, 2, 4, 1),
    "C": Case("C", "observable", 16, 2, 4, 1),
    "D": Case("D", "observable", 6, 784, 3, 10, loss="cross_entropy"),
}


# --- data and engines ------------------------------------------------------------------------------
def make_data(case: Case, N: int, dtype: str, seed: int = 1):
    """Features in [-1, 1]^p and smooth targets (regression) or labels (classification); fixed seed."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, (N, case.p)).astype(dtype)
    if case.loss == "cross_entropy":
        W = rng.standard_normal((case.p, case.outputs))
        return X, np.argmax(X @ W, axis=1).astype(np.int64)
    Y = np.sin(2 * X[:, :1]) + 0.5 * (X[:, 1:2] ** 2 if case.p > 1 else 0.0)
    return X, np.repeat(Y, case.outputs, axis=1).astype(dtype)


def make_pmm(case: Case, device: str, dtype: str):
    kw = dict(field="complex", dtype=dtype, device=device, seed=0, **case.model_kw)
    if case.kind == "eigenvalue":
        return pmm_gpu.AffineEigenvaluePMM(case.n, case.p, n_eig=case.k, **kw)
    # eta=0: the exact eigenvector reverse mode, the same formula torch.linalg.eigh's backward uses
    return pmm_gpu.AffineObservablePMM(case.n, case.p, n_outputs=case.outputs, n_eig=case.k, form="transition",
                                       eta=0.0, **kw)


class PmmEngine:
    name = "pmm_gpu"

    def __init__(self, case, device, dtype, X, Y, lr):
        self.case, self.lr, self.device = case, lr, device
        self.model = make_pmm(case, device, dtype)
        self.X, self.Y = X, Y

    def initial_params(self) -> dict:
        return {k: self.model.backend.to_numpy(v).copy() for k, v in self.model.params.items()}

    def train(self, epochs: int) -> float:
        """Seconds spent in ``epochs`` whole epochs (the per-epoch times fit measures, setup excluded)."""
        h = self.model.fit(self.X, self.Y, epochs=epochs, batch_size=self.case.batch, lr=self.lr,
                           loss=self.case.loss, restore_best=False, seed=0, verbose=False)
        return sum(h["epoch_time"])

    def infer(self) -> float:
        self.model.backend.synchronize()
        t0 = time.perf_counter()
        out = self.model.predict(self.X, batch_size=len(self.X), as_numpy=False)
        self.model.backend.synchronize()
        del out
        return time.perf_counter() - t0

    def loss(self) -> float:
        out = self.model.predict(self.X, as_numpy=False)
        return float(get_loss(self.case.loss)(out, self.model.backend.asarray(self.Y))[0])


class TorchEngine:
    name = "torch"

    def __init__(self, case, device, dtype, X, Y, lr, params):
        import torch

        from . import torch_pmm

        self.torch, self.tp, self.case = torch, torch_pmm, case
        kw = {"which": case.model_kw.get("which", "SA" if case.kind == "eigenvalue" else "LM")}
        self.model = torch_pmm.TorchPMM(case.kind, case.n, params, n_eig=case.k, dtype=getattr(torch, dtype),
                                        device=device, **kw)
        self.opt = torch_pmm.make_optimizer(self.model, lr)
        self.X = torch.tensor(X, device=device)
        self.Y = torch.tensor(Y, device=device)
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train(self, epochs: int) -> float:
        _, times = self.tp.fit(self.model, self.opt, self.X, self.Y, epochs=epochs, batch_size=self.case.batch,
                               loss=self.case.loss, seed=0)
        return sum(times)

    def infer(self) -> float:
        with self.torch.no_grad():
            self.sync()
            t0 = time.perf_counter()
            out = self.model(self.X)
            self.sync()
            del out
        return time.perf_counter() - t0

    def loss(self) -> float:
        with self.torch.no_grad():
            return float(self.tp.loss_fn(self.case.loss)(self.model(self.X), self.Y))


# --- cases A-D -------------------------------------------------------------------------------------
def _engines(case: Case, device: str, engines, cfg, X, Y, notes) -> list:
    """The engines of one case, all from pmm_gpu's initial parameters (skipped ones noted)."""
    pmm = PmmEngine(case, device, cfg.dtype, X, Y, cfg.lr)
    runs = [pmm] if "pmm_gpu" in engines else []
    if "torch" in engines:
        why = env.torch_note(device)
        if why:
            notes.append(f"case {case.name}/{device}: {why}")
        else:
            runs.append(TorchEngine(case, device, cfg.dtype, X, Y, cfg.lr, pmm.initial_params()))
    if "pypmm" in engines:
        why = env.pypmm_note()
        if why:
            notes.append(f"case {case.name}/{device}: {why}")
        else:
            peer = pypmm_peer.PyPMMEngine(case, device, cfg.dtype, X, Y, cfg.lr, pmm.initial_params())
            ref = pmm.loss()  # before any step: both start from the same parameters
            peer.initial_loss_rel = abs(peer.initial_loss - ref) / max(abs(ref), 1e-300)
            runs.append(peer)
            notes.append(peer.NOTE)
    return runs


def run_case(case: Case, device: str, engines, cfg, notes) -> list[dict]:
    """Interleaved timing of every engine on one case; returns records (without commit/host)."""
    N = cfg.samples(case)
    X, Y = make_data(case, N, cfg.dtype)
    runs = _engines(case, device, engines, cfg, X, Y, notes)
    res = {e.name: {"train": [], "infer": [], "mem": [], "warmup_s": None} for e in runs}
    for e in runs:  # warm-up: compilation, first allocations (the same epoch for every engine)
        t0 = time.perf_counter()
        e.train(1)
        e.infer()
        res[e.name]["warmup_s"] = time.perf_counter() - t0
    for _ in range(cfg.repeats):
        for e in runs:
            env.settle(device)
            with env.PeakMemory(device, e.name) as mem:
                res[e.name]["train"].append(N * cfg.epochs / e.train(cfg.epochs))
            res[e.name]["mem"].append(mem.mb)
        for e in runs:
            env.settle(device)
            res[e.name]["infer"].append(N / e.infer())
    records = []
    for e in runs:
        r = res[e.name]
        base = {"case": case.name, "engine": e.name, "device": device, "dtype": cfg.dtype}
        extra = {"initial_loss_rel": e.initial_loss_rel} if hasattr(e, "initial_loss_rel") else {}
        records += [{**base, "metric": "train_samples_per_s", **env.stats(r["train"]), "warmup_s": r["warmup_s"],
                     "samples": N, "epochs": cfg.epochs, "batch": case.batch},
                    {**base, "metric": "infer_samples_per_s", **env.stats(r["infer"])},
                    {**base, "metric": "peak_rss_mb", **env.stats(r["mem"])},
                    {**base, "metric": "final_loss", **env.stats([e.loss()]), **extra}]
    return records


# --- the command -----------------------------------------------------------------------------------
class Config:
    """Sizes and repeats of a run (``args`` as parsed by ``main``)."""

    def __init__(self, args):
        self.quick, self.dtype, self.lr = args.quick, args.dtype, args.lr
        self.repeats = args.repeats or (3 if args.quick else 7)
        self.epochs = args.epochs or (2 if args.quick else 5)
        self.n_samples = args.samples
        self.eigh_sizes, self.eigh_caps = E_SIZES, {}

    def samples(self, case: Case) -> int:
        return self.n_samples or (4 * case.batch if self.quick else 16 * case.batch)

    def eigh_batches(self, n: int, device: str):
        """Case E batches: 2^14 … 2^20, capped on the CPU (time) and by memory (≤ 2 GiB per array)."""
        batches = [b for b in E_BATCHES if b * n * n * 16 <= 2**31]
        if device == "cpu":  # LAPACK, one core per matrix: keep a call under a few seconds
            batches = [b for b in batches if b * n**3 <= (2**26 if self.quick else 2**28)]
        return batches[:1] if self.quick else batches


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="A,B,C,D,E", help="comma-separated subset of A,B,C,D,E")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="only this device (default: cpu, and cuda when pmm_gpu.cuda_status() says it is usable)")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (< 2 minutes on 2 CPU cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per engine (default 7, quick 3)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per timed run (default 5, quick 2)")
    ap.add_argument("--samples", type=int, default=None, help="training samples (default 16 batches, quick 4)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for every engine: torch.set_num_threads and the BLAS pool (threadpoolctl)")
    ap.add_argument("--json", default=None, help="write the records (a JSON list) here, after every case")
    args = ap.parse_args(argv)
    args.cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for c in args.cases:
        if c not in CASES and c != "E":
            ap.error(f"unknown case {c!r}")
    for e in args.engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r}")
    cuda_ok, why = cuda_status()
    if args.device == "cuda" and not cuda_ok:
        ap.error(f"--device cuda: {why}")
    args.devices = [args.device] if args.device else ["cpu"] + (["cuda"] if cuda_ok else [])
    args.notes = [] if cuda_ok or args.device == "cpu" else [f"cuda skipped: {why}"]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    cfg, notes = Config(args), args.notes
    threads = env.set_threads(args.threads)
    rec = env.Recorder(args.json, {"commit": env.commit(), "host": env.host(), "threads": threads})
    print(f"# pmm_gpu bench | {time.strftime('%Y-%m-%d %H:%M')} | commit {rec.meta['commit']} | {rec.meta['host']}\n"
          f"# dtype {cfg.dtype}, {cfg.repeats} runs x {cfg.epochs} epochs per engine, lr {cfg.lr}, threads {threads}",
          flush=True)
    t_start, interrupted = time.perf_counter(), False
    try:
        for device in args.devices:
            for c in args.cases:
                t0 = time.perf_counter()
                if c == "E":
                    eigh_case.run_eigh(device, cfg, notes, args.engines, on_record=rec.add)
                else:
                    rec.add(run_case(CASES[c], device, args.engines, cfg, notes))
                print(f"# case {c} on {device}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # timeout -s INT: report what was measured
        interrupted = True
        print("# interrupted: the tables hold the cases measured so far", file=sys.stderr, flush=True)
    print(report.table(rec.records, notes))
    check, ok = report.loss_check(rec.records, cfg.dtype)
    print("\n".join(check))
    rows = report.roofline_rows(rec.records, CASES) if "cuda" in args.devices and not interrupted else []
    if rows:
        print("\nGPU roofline (bytes and flops one sample must cost; floor = samples/s at the roofline):")
        print("\n".join(rows))
        rec.add([])  # the records now carry their roofline
    print(f"\n# total {time.perf_counter() - t_start:.1f} s")
    return 130 if interrupted else (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
