"""The benchmark's report: markdown tables, the same-parameter loss check and the GPU roofline.

Everything here reads records (flat dicts, see profiling/README.md) and prints; nothing runs a model.
"""
from __future__ import annotations

import time

import numpy as np

ENGINES = ("pmm_gpu", "torch", "pypmm")
LOSS_RTOL = {"float64": 1e-8, "float32": 1e-3}


def _fmt(r) -> str:
    return "–" if r is None else f"{r['median']:,.0f} ({r['min']:,.0f}–{r['max']:,.0f})"


def table(records: list[dict], notes: list[str]) -> str:
    """Markdown table per case/device: one row per engine, ratios pmm_gpu/peer in the last column;
    then case E (eigh only) per (device, n, batch)."""
    def get(c, e, d, m):
        return next((r for r in records if (r["case"], r["engine"], r["device"], r["metric"]) == (c, e, d, m)
                     and "n" not in r), None)

    lines = ["| case | device | engine | train samples/s, median (min–max) | infer samples/s | peak RSS MB | "
             "warm-up s | final loss | pmm_gpu / engine (train, infer) |", "|" + "---|" * 9]
    for c, d in sorted({(r["case"], r["device"]) for r in records if r["case"] != "E"}):
        ptr, pin = get(c, "pmm_gpu", d, "train_samples_per_s"), get(c, "pmm_gpu", d, "infer_samples_per_s")
        for e in ENGINES:
            tr = get(c, e, d, "train_samples_per_s")
            if tr is None:
                continue
            inf, mem, fl = get(c, e, d, "infer_samples_per_s"), get(c, e, d, "peak_rss_mb"), get(c, e, d, "final_loss")
            ratio = ""
            if e != "pmm_gpu" and ptr is not None and inf is not None:
                ratio = f"{ptr['median'] / tr['median']:.2f}×, {pin['median'] / inf['median']:.2f}×"
            lines.append(f"| {c} | {d} | {e} | {_fmt(tr)} | {_fmt(inf)} | {mem['median'] if mem else float('nan'):,.0f} "
                         f"| {tr['warmup_s']:.2f} | {fl['median'] if fl else float('nan'):.10g} | {ratio} |")
    eigh = [r for r in records if r["case"] == "E"]
    if eigh:
        lines += ["", eigh_table(eigh, reference="pmm_gpu")]
    return "\n".join(lines + [""] + [f"note: {n}" for n in dict.fromkeys(notes)])


def eigh_table(records: list[dict], reference: str) -> str:
    """Case E: matrices/s per (device, dtype, n, batch, engine), and reference / engine (engine names,
    e.g. "pmm_gpu" vs "torch", or "pmm_gpu/cusolver" vs "pmm_gpu/jacobi")."""
    lines = ["| case E | device | dtype | n | batch | engine | eigh matrices/s, median (min–max) | "
             f"{reference} / engine | max rel. diff |", "|" + "---|" * 9]
    for r in records:
        ref = next((q for q in records if q["engine"] == reference and (q["n"], q["device"], q["dtype"]) ==
                    (r["n"], r["device"], r["dtype"])), None)
        ratio = f"{ref['median'] / r['median']:.2f}×" if ref and r["engine"] != reference else ""
        diff = r.get("max_rel_diff")
        lines.append(f"| E | {r['device']} | {r['dtype']} | {r['n']} | {r['batch']} | {r['engine']} | {_fmt(r)} | "
                     f"{ratio} | {'' if diff is None else f'{diff:.1e}'} |")
    return "\n".join(lines)


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


def roofline_per_sample(case, n: int, itemsize: int) -> tuple[float, float]:
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


_PEAKS: dict[str, tuple[float, float]] = {}


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


def roofline_rows(records: list[dict], cases: dict) -> list[str]:
    """One line per cuda throughput record: the roofline floor and the fraction of it reached
    (also stored in the record as ``roofline``)."""
    rows = []
    for r in records:
        if r["device"] != "cuda" or r["metric"] not in ("train_samples_per_s", "eigh_matrices_per_s"):
            continue
        bw, fl = device_peaks(r["dtype"])
        case = cases.get(r["case"])
        by, fo = roofline_per_sample(case, r.get("n") or case.n, np.dtype(r["dtype"]).itemsize)
        floor = 1.0 / max(by / bw, fo / fl)  # samples/s at the roofline
        r["roofline"] = {"bytes_per_sample": by, "flops_per_sample": fo, "peak_bytes_per_s": bw,
                         "peak_flops_per_s": fl, "floor_samples_per_s": floor, "fraction": r["median"] / floor}
        rows.append(f"{r['case']:<2} {r['engine']:<8} {r.get('n', '')!s:>3} {by:>9.0f} B {fo:>11.0f} flop "
                    f"floor {floor:>12.4g}/s  reached {100 * r['median'] / floor:6.2f} %")
    return rows
