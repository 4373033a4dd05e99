"""The last step of profiling/gpu_check.sh: one result file and one table from the steps' working folder.

    python -m profiling.gpu_check_summary WORK

Reads what the steps left in WORK, whole or cut short by their budgets: steps.tsv (step, budget, exit
status, seconds), device.json, compile.json, junit.xml (or, where a timeout came first, the PASSED /
FAILED lines of tests.log), bench.json, bench_eigh.json, junit-sanitizer.xml, nsys_stats.log. Writes
profiling/results/gpu-<date>-<commit>.json and .md, copies both to $OUT when it is set, prints the
table last. Exit status 0 when compile, tests, bench and bench_eigh passed.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import sys
import xml.etree.ElementTree as ET

from . import env

REQUIRED = ("compile", "tests", "bench", "bench_eigh")  # the steps the exit status depends on
TIMEOUT_CODES = {"124", "130", "137"}  # timeout's own, SIGINT handled by Python/pytest, SIGKILL


def _json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(work: pathlib.Path) -> list[dict]:
    rows = []
    for line in (work / "steps.tsv").read_text().splitlines()[1:] if (work / "steps.tsv").exists() else []:
        name, budget, code, secs = (line.split("\t") + ["", "", "", ""])[:4]
        status = ("ok" if code == "0" else code if code.startswith("skipped") else
                  f"TIMEOUT (exit {code})" if code in TIMEOUT_CODES else f"FAILED (exit {code})")
        rows.append({"step": name, "budget_s": int(budget or 0), "exit": code, "seconds": int(secs or 0),
                     "status": status})
    return rows


def test_counts(work: pathlib.Path, junit: str = "junit.xml", log: str = "tests.log") -> dict:
    """passed/failed/skipped and the failed test ids: from the junit file, else from the -v log lines."""
    if (work / junit).exists():
        root = ET.parse(work / junit).getroot()
        suite = root.find("testsuite") if root.tag == "testsuites" else root
        t = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                  if c.find("failure") is not None or c.find("error") is not None]
        return {"passed": t["tests"] - t["failures"] - t["errors"] - t["skipped"], "failed": len(failed),
                "skipped": t["skipped"], "failed_ids": failed, "source": junit}
    text = (work / log).read_text(errors="replace") if (work / log).exists() else ""
    ids = re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", text, re.MULTILINE)
    failed = [i for i, s in ids if s in ("FAILED", "ERROR")]
    return {"passed": sum(s == "PASSED" for _, s in ids), "failed": len(failed),
            "skipped": sum(s == "SKIPPED" for _, s in ids), "failed_ids": failed, "source": log}


def rows_of(result: dict) -> list[tuple[str, str]]:
    """The summary table: steps, environment, tests, compile failures, benchmark medians."""
    rows = [(f"step {s['step']}", f"{s['status']}, {s['seconds']} s of {s['budget_s']} s") for s in result["steps"]]
    rows += [("GPU", str(result["gpu"])), ("driver / CUDA runtime", f"{result['driver']} / {result['cuda_runtime']}"),
             ("CuPy / Python", f"{result['cupy']} / {result['python']}"), ("commit", result["commit"]),
             ("date (UTC)", result["date"])]
    comp = result["compile"] or []
    rows.append(("kernels compiled", f"{sum(r['ok'] for r in comp)} of {len(comp)}"))
    rows += [("COMPILE FAILED", r["kernel"]) for r in comp if not r["ok"]]
    for key in ("tests", "sanitizer_tests"):
        t = result[key]
        rows.append((key.replace("_", " "), f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped "
                                            f"({t['source']})"))
        rows += [("FAILED", name) for name in t["failed_ids"][:12]]
    for r in (result["bench"] or []) + (result["bench_eigh"] or []):
        if r.get("metric") in ("train_samples_per_s", "infer_samples_per_s", "eigh_matrices_per_s"):
            what = f"{r['case']} {r['engine']} {r['device']} {r.get('dtype', '')}"
            if r["case"] == "E":
                what += f" n={r.get('n')} batch={r.get('batch')}"
            rows.append((what, f"{r['metric']} {r['median']:,.0f}"))
    if result["nsys"]:
        rows.append(("nsys stats", f"{len(result['nsys'].splitlines())} lines in the .md file"))
    return rows


def collect(work: pathlib.Path) -> dict:
    device = _json(work / "device.json") or {"reason": "device step did not finish"}
    try:
        import cupy
        cupy_version = cupy.__version__
    except Exception as e:  # noqa: BLE001
        cupy_version = f"not importable ({type(e).__name__})"
    nsys = (work / "nsys_stats.log").read_text(errors="replace") if (work / "nsys_stats.log").exists() else ""
    return {"commit": env.commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gpu": device.get("gpu") or device.get("nvidia_smi_name") or f"none ({device.get('reason')})",
            "driver": device.get("driver") or device.get("cuda_driver"), "cuda_runtime": device.get("cuda_runtime"),
            "cupy": cupy_version, "python": platform.python_version(), "device": device, "steps": read_steps(work),
            "compile": _json(work / "compile.json"), "tests": test_counts(work),
            "sanitizer_tests": test_counts(work, "junit-sanitizer.xml", "sanitizer.log"),
            "bench": _json(work / "bench.json"), "bench_eigh": _json(work / "bench_eigh.json"), "nsys": nsys[-20000:]}


def main(argv=None) -> int:
    work = pathlib.Path((argv or sys.argv[1:])[0])
    result = collect(work)
    rows = rows_of(result)
    width = max(len(a) for a, _ in rows)
    table = "\n".join(f"{a:<{width}}  {b}" for a, b in rows)
    out = pathlib.Path(env.ROOT) / "profiling" / "results"
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"gpu-{result['date'][:10]}-{result['commit']}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    md = [f"# GPU check {result['date'][:10]} at {result['commit']}", "", "Written by profiling/gpu_check.sh.", "",
          "```", table, "```", ""] + (["## nsys stats", "", "```", result["nsys"].strip(), "```", ""] if result["nsys"] else [])
    base.with_suffix(".md").write_text("\n".join(md))
    files = [base.with_suffix(".json"), base.with_suffix(".md")]
    if os.environ.get("OUT"):
        for f in files:
            shutil.copy(f, pathlib.Path(os.environ["OUT"]) / f.name)
    print("\nwrote " + ", ".join(map(str, files)) + (" (and copied to $OUT)" if os.environ.get("OUT") else ""))
    print("\n" + table)
    status = {s["step"]: s["exit"] for s in result["steps"]}
    return 0 if all(status.get(s) == "0" for s in REQUIRED) else 1


if __name__ == "__main__":
    sys.exit(main())
