#!/usr/bin/env bash
# profiling/gpu_check.sh: the GPU check of DESIGN.md §4.4, in one run of under five minutes
# (each step has its own timeout: 120 s tests + 75 s bench + 90 s bench_eigh, about 290 s at most).
#
#   bash profiling/gpu_check.sh            # from anywhere; the repository is the working tree
#
# 1. names the GPU (CupyBackend.describe, nvidia-smi when present); without a usable GPU it prints
#    why and exits 77 ("skipped"), writing nothing;
# 2. python -m pytest -m gpu -q                      (CuPy backend vs the NumPy oracle, the kernels)
# 3. python profiling/bench.py --device cuda --quick (when profiling/bench.py exists), then
#    python profiling/bench_eigh.py --device cuda --quick (issue 7: Jacobi kernel vs cuSOLVER, case E
#    at n = 8, 16, 32, batch 2^20, both precisions, and cases A-C with each solver)
# 4. writes profiling/results/gpu-<date>-<commit>.json and .md (commit, GPU, driver, CuPy, date,
#    test counts, benchmark medians), copies them and the logs into $OUT when that is set, and prints
#    a short table last. Exit status: 0 when the tests and the benchmark's own checks pass.
# Needs Python with numpy, cupy and pytest; pmm_gpu need not be installed (PYTHONPATH=. is used).
# Debugging switch: GPU_CHECK_ALLOW_CPU=1 runs steps 2-4 without a GPU (bench on the CPU), to test
# this script's plumbing on a machine without one.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
T0=$(date +%s)

# --- 1. the device ----------------------------------------------------------------------------------
"$PY" - "$WORK/device.json" <<'PYEOF'
import json, shutil, subprocess, sys
from pmm_gpu.backend import cuda_status, get_backend
ok, why = cuda_status()
info = {"usable": ok, "reason": why}
if ok:
    info.update(get_backend("cuda").describe())
if shutil.which("nvidia-smi"):
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        name, driver, mem = [s.strip() for s in r.stdout.splitlines()[0].split(",")]
        info.update({"nvidia_smi_name": name, "driver": driver, "memory": mem})
json.dump(info, open(sys.argv[1], "w"), indent=1)
print("device:", json.dumps(info))
PYEOF
[ $? -eq 0 ] || { echo "gpu_check: could not import pmm_gpu from $ROOT with $PY" >&2; exit 1; }
USABLE=$("$PY" -c "import json,sys; print(int(json.load(open(sys.argv[1]))['usable']))" "$WORK/device.json")
DEVICE=cuda
if [ "$USABLE" != 1 ]; then
  if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    echo "gpu_check: SKIPPED, no usable GPU: $("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['reason'])" "$WORK/device.json")" >&2
    echo "gpu_check: nothing was run and no result file was written (exit 77 = skipped)" >&2
    exit 77
  fi
  DEVICE=cpu
  echo "gpu_check: GPU_CHECK_ALLOW_CPU=1: no GPU, testing the plumbing only (bench on the CPU)" >&2
fi

# --- 2. the gpu-marked tests ------------------------------------------------------------------------
echo "== pytest -m gpu ==" >&2
timeout 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$WORK/junit.xml" tests 2>&1 | tee "$WORK/pytest.log"
PYTEST_RC=${PIPESTATUS[0]}

# --- 3. the benchmark -------------------------------------------------------------------------------
BENCH_RC=absent
if [ -f profiling/bench.py ]; then
  echo "== bench.py --device $DEVICE --quick ==" >&2
  timeout 75 "$PY" profiling/bench.py --device "$DEVICE" --quick --json "$WORK/bench.json" 2>&1 | tee "$WORK/bench.log"
  BENCH_RC=${PIPESTATUS[0]}
fi
EIGH_RC=absent
if [ -f profiling/bench_eigh.py ]; then
  echo "== bench_eigh.py --device $DEVICE --quick ==" >&2
  timeout 90 "$PY" profiling/bench_eigh.py --device "$DEVICE" --quick --json "$WORK/bench_eigh.json" 2>&1 | tee "$WORK/bench_eigh.log"
  EIGH_RC=${PIPESTATUS[0]}
fi

# --- 4. results -------------------------------------------------------------------------------------
"$PY" - "$WORK" "$PYTEST_RC" "$BENCH_RC" "$(( $(date +%s) - T0 ))" "$EIGH_RC" <<'PYEOF'
import datetime, json, os, pathlib, platform, shutil, subprocess, sys
import xml.etree.ElementTree as ET

work, pytest_rc, bench_rc, elapsed = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()  # noqa: E731
commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
device = json.loads((work / "device.json").read_text())
now = datetime.datetime.now(datetime.timezone.utc)
tests = {"exit_status": pytest_rc}
if (work / "junit.xml").exists():
    suite = ET.parse(work / "junit.xml").getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    t = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    tests.update(t, passed=t["tests"] - t["failures"] - t["errors"] - t["skipped"], seconds=float(suite.get("time", 0)))
    tests["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                       if c.find("failure") is not None or c.find("error") is not None]
bench = json.loads((work / "bench.json").read_text()) if (work / "bench.json").exists() else None
eigh_rc = sys.argv[5]
bench_eigh = json.loads((work / "bench_eigh.json").read_text()) if (work / "bench_eigh.json").exists() else None
try:
    import cupy
    cupy_version = cupy.__version__
except Exception as e:  # noqa: BLE001
    cupy_version = f"not importable ({type(e).__name__})"
result = {"commit": commit, "dirty": dirty, "date": now.isoformat(timespec="seconds"),
          "gpu": device.get("gpu") or device.get("nvidia_smi_name") or f"none ({device['reason']})",
          "driver": device.get("driver") or device.get("cuda_driver"), "cuda_runtime": device.get("cuda_runtime"),
          "cupy": cupy_version, "python": platform.python_version(), "device": device, "tests": tests,
          "bench_exit_status": bench_rc, "bench": bench, "bench_eigh_exit_status": eigh_rc,
          "bench_eigh": bench_eigh, "elapsed_s": elapsed}

rows = [("GPU", str(result["gpu"])), ("driver / CUDA runtime", f"{result['driver']} / {result['cuda_runtime']}"),
        ("CuPy / Python", f"{cupy_version} / {result['python']}"),
        ("commit", commit + (" (dirty)" if dirty else "")), ("date (UTC)", result["date"]),
        ("gpu tests", f"{tests.get('passed', '?')} passed, {tests.get('failures', 0) + tests.get('errors', 0)} failed, "
                      f"{tests.get('skipped', '?')} skipped in {tests.get('seconds', 0):.0f} s (exit {pytest_rc})"),
        ("bench", {"absent": "profiling/bench.py absent"}.get(bench_rc, f"exit {bench_rc}" + ("" if bench else ", no JSON"))),
        ("bench_eigh", {"absent": "profiling/bench_eigh.py absent"}.get(
            eigh_rc, f"exit {eigh_rc}" + ("" if bench_eigh else ", no JSON")))]
for name in tests.get("failed", [])[:10]:
    rows.append(("FAILED", name))
for r in (bench or []) + (bench_eigh or []):
    if r.get("metric") in ("train_samples_per_s", "infer_samples_per_s", "eigh_matrices_per_s") and "median" in r:
        what = f"bench {r['case']} {r['engine']} {r['device']} {r.get('dtype', '')}"
        if r["case"] == "E":
            what += f" n={r.get('n')} batch={r.get('batch')}"
        rows.append((what, f"{r['metric']} {r['median']:,.0f}"))
rows.append(("elapsed", f"{elapsed} s"))
width = max(len(a) for a, _ in rows)
table = "\n".join(f"{a:<{width}}  {b}" for a, b in rows)

out = pathlib.Path("profiling/results")
out.mkdir(parents=True, exist_ok=True)
base = out / f"gpu-{now:%Y-%m-%d}-{commit}"
base.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
md = [f"# GPU check {now:%Y-%m-%d} at {commit}", "", "Written by profiling/gpu_check.sh.", "", "```", table, "```", ""]
base.with_suffix(".md").write_text("\n".join(md))
files = [base.with_suffix(".json"), base.with_suffix(".md")]
if os.environ.get("OUT"):
    dest = pathlib.Path(os.environ["OUT"])
    dest.mkdir(parents=True, exist_ok=True)
    for f in files + [work / "pytest.log", work / "bench.log", work / "bench.json", work / "junit.xml",
                      work / "bench_eigh.log", work / "bench_eigh.json"]:
        if f.exists():
            shutil.copy(f, dest / (f.name if f.parent != work else f"gpu_check-{f.name}"))
print("\nwrote " + ", ".join(map(str, files)) + (f" (and copied to $OUT={os.environ['OUT']})" if os.environ.get("OUT") else ""))
print("\n" + table)
PYEOF
[ "$PYTEST_RC" = 0 ] && { [ "$BENCH_RC" = 0 ] || [ "$BENCH_RC" = absent ]; } && { [ "$EIGH_RC" = 0 ] || [ "$EIGH_RC" = absent ]; }
