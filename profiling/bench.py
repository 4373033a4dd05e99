"""pmm_gpu measured side by side against its peers on the standard cases of DESIGN.md §5.

    python profiling/bench.py --quick --json out.json          # every case, every engine available
    python profiling/bench.py --cases A,C --engines pmm_gpu,torch --device cpu

Engines: pmm_gpu (NumPy on cpu, CuPy on cuda), torch (profiling/torch_pmm.py: torch.linalg.eigh,
autograd, torch.optim.Adam) and pypmm (profiling/pypmm_peer.py: the authors' JAX library
``parametricmatrixmodels``, its Model.train and complex Adam; skipped with a note when it is not
importable; it starts from the same parameters, but its optimizer and batch order differ, so only its
initial loss is checked against pmm_gpu's). All engines of a case get the same data, shapes, dtype and
initial parameters (pmm_gpu's, copied into the peers), run in one process, interleaved repeat by
repeat. Each engine first runs one warm-up epoch (its time is reported as ``warmup_s``: compilation,
first-call allocations); then ``repeats`` timed runs of ``epochs`` whole epochs (forward + backward +
Adam) each. After them, each engine's loss on the full training set is reported and compared: from
the same parameters, on the same batches, the engines must agree (``loss check``). See README.md
for the JSON records.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # run from a checkout without installing

import pmm_gpu  # noqa: E402
from pmm_gpu.backend import cuda_status  # noqa: E402

ENGINES = ("pmm_gpu", "torch", "pypmm")
METRICS = ("train_samples_per_s", "infer_samples_per_s", "eigh_matrices_per_s", "peak_rss_mb", "final_loss")
LOSS_RTOL = {"float64": 1e-8, "float32": 1e-3}


@dataclass
class Case:
    """One row of DESIGN.md §5: model kind and shapes; N training samples, mini-batches of ``batch``."""

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
E_SIZES = (8, 16, 32, 64)
E_BATCHES = tuple(2**e for e in (14, 16, 18, 20))


# --- environment -----------------------------------------------------------------------------------
def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", HERE, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", HERE, "diff", "--quiet", "HEAD", "--", "../pmm_gpu", "../kernels"]).returncode
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def host() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{socket.gethostname()} | {cpu} x{os.cpu_count()} | Python {platform.python_version()} | NumPy {np.__version__}"


class PeakMemory:
    """Peak host RSS of this process during a block (Linux: VmHWM reset through /proc/self/clear_refs),
    or the device pool's high-water mark on cuda."""

    def __init__(self, device: str, engine: str):
        self.device, self.engine, self.mb = device, engine, float("nan")

    def __enter__(self):
        if self.device == "cuda":
            if self.engine == "torch":
                import torch
                torch.cuda.reset_peak_memory_stats()
            else:
                import cupy
                cupy.get_default_memory_pool().free_all_blocks()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            if self.engine == "torch":
                import torch
                self.mb = torch.cuda.max_memory_allocated() / 2**20
            else:
                import cupy
                self.mb = cupy.get_default_memory_pool().total_bytes() / 2**20  # the pool only grows
            return
        try:
            with open("/proc/self/status") as f:
                self.mb = next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
        except (OSError, StopIteration):
            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process lifetime peak


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
    from pmm_gpu import AffineObservablePMM

    # eta=0: the exact eigenvector reverse mode, the same formula torch.linalg.eigh's backward uses
    return AffineObservablePMM(case.n, case.p, n_outputs=case.outputs, n_eig=case.k, form="transition",
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
        from pmm_gpu.losses import get_loss

        be = self.model.backend
        out = self.model.predict(self.X, as_numpy=False)
        return float(get_loss(self.case.loss)(out, be.asarray(self.Y))[0])


class TorchEngine:
    name = "torch"

    def __init__(self, case, device, dtype, X, Y, lr, params):
        import torch
        import torch_pmm

        self.torch, self.tp, self.case = torch, torch_pmm, case
        tdtype = getattr(torch, dtype)
        kw = {"which": case.model_kw.get("which", "SA" if case.kind == "eigenvalue" else "LM")}
        self.model = torch_pmm.TorchPMM(case.kind, case.n, params, n_eig=case.k, dtype=tdtype, device=device, **kw)
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


def pypmm_note() -> str | None:
    """None when the authors' library can be driven here (profiling/pypmm_peer.py), else why it is skipped."""
    import pypmm_peer

    why = pypmm_peer.available()
    return f"pypmm skipped: {why}" if why else None


def torch_note(device: str) -> str | None:
    try:
        import torch
    except Exception as e:
        return f"torch skipped: not importable ({type(e).__name__}); pip install pmm_gpu[bench]"
    if device == "cuda" and not torch.cuda.is_available():
        return "torch skipped on cuda: torch.cuda.is_available() is False (CPU-only torch build?)"
    return None


# --- measurement -----------------------------------------------------------------------------------
def stats(values) -> dict:
    v = np.asarray(values, float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n_runs": int(v.size)}


# After a parallel region, OpenMP worker threads (torch's, JAX's) keep spinning for a while before they
# sleep (libgomp/libiomp block time, ~0.2 s): timed right after, the next engine would share the cores
# with them. An idle pause before every timed run lets them settle; it is not part of any timing.
SETTLE_S = 0.3


def settle(device: str):
    if device == "cpu":
        time.sleep(SETTLE_S)


def run_case(case: Case, device: str, engines, cfg, notes) -> list[dict]:
    """Interleaved timing of every engine on one case; returns records (without commit/host)."""
    dtype = cfg.dtype
    N = cfg.samples(case)
    X, Y = make_data(case, N, dtype)
    pmm = PmmEngine(case, device, dtype, X, Y, cfg.lr)
    runs = [pmm]
    if "torch" in engines:
        why = torch_note(device)
        if why:
            notes.append(f"case {case.name}/{device}: {why}")
        else:
            runs.append(TorchEngine(case, device, dtype, X, Y, cfg.lr, pmm.initial_params()))
    if "pmm_gpu" not in engines:
        runs.remove(pmm)
    if "pypmm" in engines:
        why = pypmm_note()
        if why:
            notes.append(f"case {case.name}/{device}: {why}")
        else:
            import pypmm_peer

            peer = pypmm_peer.PyPMMEngine(case, device, dtype, X, Y, cfg.lr, pmm.initial_params())
            ref = pmm.loss()  # before any step: both start from the same parameters
            peer.initial_loss_rel = abs(peer.initial_loss - ref) / max(abs(ref), 1e-300)
            runs.append(peer)
            if peer.NOTE not in notes:
                notes.append(peer.NOTE)
    res = {e.name: {"train": [], "infer": [], "mem": [], "warmup_s": None} for e in runs}
    for e in runs:  # warm-up: compilation, first allocations (the same epoch for every engine)
        t0 = time.perf_counter()
        e.train(1)
        e.infer()
        res[e.name]["warmup_s"] = time.perf_counter() - t0
    for _ in range(cfg.repeats):
        for e in runs:
            settle(device)
            with PeakMemory(device, e.name) as mem:
                res[e.name]["train"].append(N * cfg.epochs / e.train(cfg.epochs))
            res[e.name]["mem"].append(mem.mb)
        for e in runs:
            settle(device)
            res[e.name]["infer"].append(N / e.infer())
    records = []
    for e in runs:
        r = res[e.name]
        base = {"case": case.name, "engine": e.name, "device": device, "dtype": dtype}
        records += [{**base, "metric": "train_samples_per_s", **stats(r["train"]), "warmup_s": r["warmup_s"],
                     "samples": N, "epochs": cfg.epochs, "batch": case.batch},
                    {**base, "metric": "infer_samples_per_s", **stats(r["infer"])},
                    {**base, "metric": "peak_rss_mb", **stats(r["mem"])},
                    {**base, "metric": "final_loss", **stats([e.loss()]),
                     **({"initial_loss_rel": e.initial_loss_rel} if hasattr(e, "initial_loss_rel") else {})}]
    return records


def run_eigh(device: str, engines, cfg, notes) -> list[dict]:
    """Case E: eigh-only throughput of random complex Hermitian batches, pmm_gpu's backend vs torch."""
    be = pmm_gpu.get_backend(device)
    rng = np.random.default_rng(2)
    cdtype = np.result_type(cfg.dtype, np.complex64)
    solvers = {}
    if "pmm_gpu" in engines:
        solvers["pmm_gpu"] = (be.asarray, be.eigh, be.synchronize)
    if "torch" in engines and not torch_note(device):
        import torch
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        solvers["torch"] = (lambda a: torch.tensor(a, device=device), torch.linalg.eigh, sync)
    records = []
    for n in E_SIZES:
        for B in cfg.eigh_batches(n, device):
            A = rng.standard_normal((B, n, n)) + 1j * rng.standard_normal((B, n, n))
            A = ((A + A.conj().swapaxes(1, 2)) / 2).astype(cdtype)
            inputs = {name: s[0](A) for name, s in solvers.items()}
            del A
            times = {name: [] for name in solvers}
            for rep in range(cfg.repeats + 1):  # the first round is the warm-up
                for name, (_, eigh, sync) in solvers.items():
                    sync()
                    settle(device)
                    t0 = time.perf_counter()
                    out = eigh(inputs[name])
                    sync()
                    if rep:
                        times[name].append(B / (time.perf_counter() - t0))
                    del out
            for name in solvers:
                records.append({"case": "E", "engine": name, "device": device, "dtype": cfg.dtype,
                                "metric": "eigh_matrices_per_s", **stats(times[name]), "n": n, "batch": B})
            del inputs
    if "pypmm" in engines:
        notes.append(f"case E/{device}: {pypmm_note() or 'pypmm has no eigh-only entry point (it calls jnp.linalg.eigh)'}")
    return records


# --- GPU roofline ----------------------------------------------------------------------------------
def roofline_per_sample(case: Case | None, n: int, itemsize: int) -> tuple[float, float]:
    """(bytes, flops) one training sample (or, for case=None, one eigh) must at least cost.

    Bytes: the batch of complex matrices has to leave the assembler and reach the eigensolver, and its
    eigenvectors have to come back for the reverse mode: M written + read, V written + read, Ā written
    + read (training) = 6 complex n² arrays (eigh only: M read, V written = 2). Flops: a Hermitian
    eigendecomposition with vectors ≈ 9n³ real-arithmetic operations counted as complex ≈ 4·9n³;
    reverse mode: V_S diag(ȳ) V_Sᴴ (AE, 8n²k) or V (F∘VᴴV̄) Vᴴ (AO, two complex n³ matmuls = 16n³)
    plus the secondaries (AO: 2·8·K·(n²r + nr²)); the parameter GEMMs 2·2·(p+1)·n².
    """
    c = 2 * itemsize
    eig = 36.0 * n**3
    if case is None:
        return 2 * c * n * n, eig
    flops = eig + 4 * (case.p + 1) * n * n
    if case.kind == "eigenvalue":
        flops += 8 * n * n * case.k
    else:
        flops += 16 * n**3 + 16 * case.outputs * (n * n * case.k + n * case.k**2)
    return 6 * c * n * n, flops


_PEAKS = {}


def device_peaks(dtype: str) -> tuple[float, float]:
    """Measured (bytes/s, flops/s) of the current GPU: a large device copy and a large GEMM."""
    if dtype in _PEAKS:
        return _PEAKS[dtype]
    import cupy

    a = cupy.empty(2**28, dtype=np.uint8)
    b = cupy.empty_like(a)
    m = cupy.ones((8192, 8192), dtype=dtype)
    best_bw, best_fl = 0.0, 0.0
    for _ in range(4):
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        b[...] = a
        cupy.cuda.Device().synchronize()
        best_bw = max(best_bw, 2 * a.nbytes / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        m @ m
        cupy.cuda.Device().synchronize()
        best_fl = max(best_fl, 2 * 8192**3 / (time.perf_counter() - t0))
    _PEAKS[dtype] = (best_bw, best_fl)
    return _PEAKS[dtype]


def roofline_rows(records: list[dict]) -> list[str]:
    rows = []
    for r in records:
        if r["device"] != "cuda" or r["metric"] not in ("train_samples_per_s", "eigh_matrices_per_s"):
            continue
        bw, fl = device_peaks(r["dtype"])
        case = CASES.get(r["case"])
        by, fo = roofline_per_sample(case, r.get("n") or case.n, np.dtype(r["dtype"]).itemsize)
        floor = 1.0 / max(by / bw, fo / fl)  # samples/s at the roofline
        r["roofline"] = {"bytes_per_sample": by, "flops_per_sample": fo, "peak_bytes_per_s": bw,
                         "peak_flops_per_s": fl, "floor_samples_per_s": floor, "fraction": r["median"] / floor}
        rows.append(f"{r['case']:<2} {r['engine']:<8} {r.get('n', '')!s:>3} {by:>9.0f} B {fo:>11.0f} flop "
                    f"floor {floor:>12.4g}/s  reached {100 * r['median'] / floor:6.2f} %")
    return rows


# --- report ----------------------------------------------------------------------------------------
def table(records: list[dict], notes: list[str]) -> str:
    """Markdown table per case/device: one row per engine, ratios pmm_gpu/peer in the last column."""
    get = lambda c, e, d, m: next((r for r in records if (r["case"], r["engine"], r["device"], r["metric"]) == (c, e, d, m)
                                   and "n" not in r), None)
    fmt = lambda r: "–" if r is None else f"{r['median']:,.0f} ({r['min']:,.0f}–{r['max']:,.0f})"
    lines = ["| case | device | engine | train samples/s, median (min–max) | infer samples/s | peak RSS MB | "
             "warm-up s | final loss | pmm_gpu / engine (train, infer) |", "|" + "---|" * 9]
    keys = sorted({(r["case"], r["device"]) for r in records if r["case"] != "E"})
    for c, d in keys:
        for e in ENGINES:
            tr = get(c, e, d, "train_samples_per_s")
            if tr is None:
                continue
            inf, mem, fl = get(c, e, d, "infer_samples_per_s"), get(c, e, d, "peak_rss_mb"), get(c, e, d, "final_loss")
            ratio = ""
            ptr, pin = get(c, "pmm_gpu", d, "train_samples_per_s"), get(c, "pmm_gpu", d, "infer_samples_per_s")
            if e != "pmm_gpu" and ptr is not None:
                ratio = f"{ptr['median'] / tr['median']:.2f}×, {pin['median'] / inf['median']:.2f}×"
            lines.append(f"| {c} | {d} | {e} | {fmt(tr)} | {fmt(inf)} | {mem['median']:,.0f} | {tr['warmup_s']:.2f} | "
                         f"{fl['median']:.10g} | {ratio} |")
    eigh = [r for r in records if r["case"] == "E"]
    if eigh:
        lines += ["", "| case E | device | n | batch | engine | eigh matrices/s, median (min–max) | pmm_gpu / engine |",
                  "|" + "---|" * 7]
        for r in eigh:
            ref = next((q for q in eigh if q["engine"] == "pmm_gpu" and (q["n"], q["batch"], q["device"]) ==
                        (r["n"], r["batch"], r["device"])), None)
            ratio = f"{ref['median'] / r['median']:.2f}×" if ref and r["engine"] != "pmm_gpu" else ""
            lines.append(f"| E | {r['device']} | {r['n']} | {r['batch']} | {r['engine']} | {fmt(r)} | {ratio} |")
    return "\n".join(lines + [""] + [f"note: {n}" for n in notes])


def loss_check(records: list[dict], dtype: str) -> tuple[list[str], bool]:
    """Compare every engine's final loss with pmm_gpu's (same start, same batches -> same loss)."""
    lines, ok = [], True
    for r in records:
        if r["metric"] != "final_loss" or r["engine"] == "pmm_gpu":
            continue
        ref = next((q for q in records if q["metric"] == "final_loss" and q["engine"] == "pmm_gpu"
                    and (q["case"], q["device"]) == (r["case"], r["device"])), None)
        if ref is None:
            continue
        if "initial_loss_rel" in r:  # pypmm: same start, but its own Adam and batch order
            good = r["initial_loss_rel"] <= LOSS_RTOL[dtype]
            ok &= good
            lines.append(f"loss check {r['case']}/{r['device']}: {r['engine']} starts from pmm_gpu's parameters: "
                         f"initial loss relative difference {r['initial_loss_rel']:.1e} {'ok' if good else 'MISMATCH'}; "
                         f"final loss {r['median']:.12g} vs pmm_gpu {ref['median']:.12g} (not comparable: "
                         f"different optimizer and batches)")
            continue
        rel = abs(r["median"] - ref["median"]) / max(abs(ref["median"]), 1e-300)
        good = rel <= LOSS_RTOL[dtype]
        ok &= good
        lines.append(f"loss check {r['case']}/{r['device']}: pmm_gpu {ref['median']:.12g} vs {r['engine']} "
                     f"{r['median']:.12g}: relative difference {rel:.1e} {'ok' if good else 'MISMATCH'}")
    return lines, ok


def set_threads(n: int | None) -> str:
    """Pin every engine's CPU thread pools to n threads (None: leave the defaults); returns a description."""
    desc = []
    try:
        import torch
        if n:
            torch.set_num_threads(n)
        desc.append(f"torch {torch.get_num_threads()}")
    except Exception:
        pass
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        if n:
            threadpool_limits(n)
        desc += [f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info()]
    except Exception:
        if n:
            desc.append("BLAS pool not limited (threadpoolctl not importable)")
    return ", ".join(desc) or "defaults"


class Config:
    def __init__(self, args):
        self.quick, self.dtype, self.lr = args.quick, args.dtype, args.lr
        self.repeats = args.repeats or (3 if args.quick else 7)
        self.epochs = args.epochs or (2 if args.quick else 5)
        self.n_samples = args.samples

    def samples(self, case: Case) -> int:
        return self.n_samples or (4 * case.batch if self.quick else 16 * case.batch)

    def eigh_batches(self, n: int, device: str):
        """Case E batches: 2^14 … 2^20, capped on the CPU (time) and by memory (≤ 2 GiB per array)."""
        batches = [b for b in E_BATCHES if b * n * n * 16 <= 2**31]
        if device == "cpu":  # LAPACK, one core per matrix: keep a call under a few seconds
            batches = [b for b in batches if b * n**3 <= (2**26 if self.quick else 2**28)]
        if self.quick:
            batches = batches[:1]
        return batches


def main(argv=None) -> int:
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
                    help="CPU threads for every engine: torch.set_num_threads and the BLAS pool (threadpoolctl); "
                         "default: each library's own default")
    ap.add_argument("--json", default=None, help="write the records (a JSON list) to this file")
    args = ap.parse_args(argv)
    cases = [c.strip().upper() for c in args.cases.split(",") if c.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for c in cases:
        if c not in CASES and c != "E":
            ap.error(f"unknown case {c!r}")
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r}")
    cuda_ok, why = cuda_status()
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if cuda_ok else [])
    notes = [] if cuda_ok or args.device == "cpu" else [f"cuda skipped: {why}"]
    if "cuda" in devices and not cuda_ok:
        ap.error(f"--device cuda: {why}")
    cfg = Config(args)
    threads = set_threads(args.threads)
    meta = {"commit": commit(), "host": host()}
    print(f"# pmm_gpu bench | {time.strftime('%Y-%m-%d %H:%M')} | commit {meta['commit']} | {meta['host']}\n"
          f"# dtype {cfg.dtype}, {cfg.repeats} runs x {cfg.epochs} epochs per engine, lr {cfg.lr}, threads {threads}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    records = []
    t_start = time.perf_counter()
    for device in devices:
        for c in cases:
            t0 = time.perf_counter()
            recs = run_eigh(device, engines, cfg, notes) if c == "E" else run_case(CASES[c], device, engines, cfg, notes)
            records += recs
            print(f"# case {c} on {device}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    records = [{**r, **meta, "threads": threads, "loadavg": round(os.getloadavg()[0], 2)} for r in records]
    print(table(records, notes))
    check, ok = loss_check(records, cfg.dtype)
    print("\n".join(check))
    rows = roofline_rows(records) if "cuda" in devices else []
    if rows:
        print("\nGPU roofline (bytes and flops one sample must cost; floor = samples/s at the roofline):")
        print("\n".join(rows))
    print(f"\n# total {time.perf_counter() - t_start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
