#!/usr/bin/env bash
# profiling/gpu_check.sh: the GPU check of docs/DESIGN.md §4.4, under six minutes in all.
#
#   bash profiling/gpu_check.sh                                 # from anywhere; the repository is the tree
#   GPU_CHECK_COMMIT=$(git rev-parse --short=12 HEAD) bash profiling/gpu_check.sh   # a copied tree without .git
#
# Every step has its own budget (timeout -s INT: Python reports what it measured and pytest writes its
# junit file), writes its results as it goes, and is recorded in steps.tsv; the working folder is
# re-packed into $OUT/gpu_check.tgz after every step, so a cut-off run still returns what it measured.
#   device     10 s  name the GPU (CupyBackend.describe, nvidia-smi); without one: exit 77, nothing written
#   compile    45 s  python -m profiling.compile_kernels: every kernel instantiation, failures by name,
#                    registers/shared memory per instantiation; fills CuPy's kernel cache for the tests
#   tests      85 s  pytest -m "gpu and not slow" (CuPy backend vs the NumPy oracle, kernels, issue 12)
#   bench      35 s  python -m profiling.bench --device cuda --quick (cases A-E, pmm_gpu vs torch, roofline)
#   bench_eigh 35 s  python -m profiling.bench_eigh --quick (Jacobi kernel vs cuSOLVER: case E at
#                    n = 8, 16, 32, batch 2^16 (cuSOLVER 2^14), both precisions; cases A-C per solver)
#   time_to_accuracy 25 s  python -m profiling.time_to_accuracy --device cuda (pmm_gpu and torch: epochs
#                    and seconds to each case's target loss; time_to_accuracy.md)
#   sanitizer  35 s  compute-sanitizer memcheck + racecheck over every kernel (tests/test_gpu_hardware.py)
#   nsys    20+10 s  where nsys exists: a short case-C training run with NVTX ranges, `nsys stats` summary
#   summary     5 s  profiling/results/gpu-<date>-<commit>.json and .md, copied to $OUT; one table last
# Budgets 305 s; with timeout's 5 s kill grace per step at most 355 s. Exit status 0 when compile, tests
# and both benchmarks pass.
# Needs python3 with numpy, cupy and pytest; pmm_gpu need not be installed (PYTHONPATH=. is used).
# NVTX ranges need the `nvtx` package: importable, or carried as a wheel in .whl/ (see the device
# README), or else a stand-in over cupy.cuda.nvtx is used. JAX, when importable, must not preallocate.
# Debugging switch: GPU_CHECK_ALLOW_CPU=1 runs every step without a GPU (kernels compiled by NVRTC
# from cuda-bindings, benchmarks on the CPU) to time and test this script's plumbing.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX beside CuPy and PyTorch: allocate on demand
PY=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
printf 'step\tbudget_s\texit\tseconds\n' > "$WORK/steps.tsv"

pack() {  # the working folder so far, as one file in $OUT (which returns at most 8 files)
  [ -n "${OUT:-}" ] && mkdir -p "$OUT" && tar -czf "$OUT/gpu_check.tgz" -C "$WORK" . 2>/dev/null
  return 0
}

step() {  # step NAME BUDGET_S COMMAND...: run with its budget, log to $WORK/NAME.log, record exit and time
  local name=$1 budget=$2; shift 2
  echo "== $name (budget ${budget} s): $*" >&2
  local t0=$SECONDS
  timeout -s INT -k 5 "$budget" "$@" 2>&1 | tee "$WORK/$name.log"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\t%s\n' "$name" "$budget" "$rc" "$((SECONDS - t0))" >> "$WORK/steps.tsv"
  pack
  return "$rc"
}

skip() {  # skip NAME REASON
  echo "== $1: skipped ($2)" >&2
  printf '%s\t0\tskipped: %s\t0\n' "$1" "$2" >> "$WORK/steps.tsv"
}

# --- device ------------------------------------------------------------------------------------------
step device 10 "$PY" - "$WORK/device.json" <<'PYEOF'
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
[ -s "$WORK/device.json" ] || { echo "gpu_check: could not import pmm_gpu from $ROOT with $PY" >&2; exit 1; }
DEVICE=cuda
if ! "$PY" -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['usable'] else 1)" "$WORK/device.json"; then
  if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    echo "gpu_check: SKIPPED, no usable GPU: $("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['reason'])" "$WORK/device.json")" >&2
    echo "gpu_check: nothing was run and no result file was written (exit 77 = skipped)" >&2
    exit 77
  fi
  DEVICE=cpu
  echo "gpu_check: GPU_CHECK_ALLOW_CPU=1: no GPU, testing the plumbing only (NVRTC, benchmarks on the CPU)" >&2
fi

# --- compile, tests, benchmarks -------------------------------------------------------------------
step compile 45 "$PY" -m profiling.compile_kernels --json "$WORK/compile.json"
PER_TEST=()
"$PY" -c "import pytest_timeout" 2>/dev/null && PER_TEST=(--timeout 45)  # one hang must not eat the step
step tests 85 "$PY" -m pytest -m "gpu and not slow" -v -p no:cacheprovider ${PER_TEST[@]+"${PER_TEST[@]}"} \
  --junitxml="$WORK/junit.xml" tests
step bench 35 "$PY" -m profiling.bench --device "$DEVICE" --quick --json "$WORK/bench.json"
step bench_eigh 35 "$PY" -m profiling.bench_eigh --device "$DEVICE" --quick --json "$WORK/bench_eigh.json"
step time_to_accuracy 25 "$PY" -m profiling.time_to_accuracy --device "$DEVICE" --engines pmm_gpu,torch \
  --seeds 1 --rounds 3 --max-epochs 25 --out "$WORK/time_to_accuracy.md"

# --- compute-sanitizer ------------------------------------------------------------------------------
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$SANITIZER" ] && [ "$DEVICE" = cuda ]; then
  export PATH="$(dirname "$SANITIZER"):$PATH"
  step sanitizer 35 "$PY" -m pytest -m "gpu and slow" -k sanitizer -v -p no:cacheprovider \
    --junitxml="$WORK/junit-sanitizer.xml" tests/test_gpu_hardware.py
else
  skip sanitizer "compute-sanitizer not found or no GPU"
fi

# --- Nsight Systems: a short training run with NVTX ranges ------------------------------------------
NSYS=$(command -v nsys || ls /opt/nvidia/nsight-systems*/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ] && [ "$DEVICE" = cuda ]; then
  NVTX_PATH=""
  if ! "$PY" -c "import nvtx" 2>/dev/null; then
    if ls .whl/nvtx-*.whl >/dev/null 2>&1; then  # a carried wheel (device README)
      "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" .whl/nvtx-*.whl && NVTX_PATH="$WORK/site"
    else  # stand-in: nvtx.annotate over CuPy's own NVTX bindings (no domain: ranges land in the default one)
      mkdir -p "$WORK/shim" && NVTX_PATH="$WORK/shim"
      printf '%s\n' 'import contextlib' 'from cupy.cuda import nvtx as _n' '' \
        '@contextlib.contextmanager' 'def annotate(message=None, domain=None, **kw):' \
        '    _n.RangePush(message or "")' '    try:' '        yield' '    finally:' '        _n.RangePop()' \
        > "$WORK/shim/nvtx.py"
    fi
  fi
  PYTHONPATH="${NVTX_PATH:+$NVTX_PATH:}$PYTHONPATH" step nsys 20 "$NSYS" profile -t cuda,nvtx -o "$WORK/nsys_c" \
    --force-overwrite true "$PY" -m profiling.bench --cases C --engines pmm_gpu --device cuda --samples 4096 \
    --repeats 1 --epochs 2
  step nsys_stats 10 "$NSYS" stats -q --report nvtx_sum,cuda_gpu_kern_sum "$WORK/nsys_c.nsys-rep"
  rm -f "$WORK/nsys_c.nsys-rep" "$WORK/nsys_c.sqlite" "$WORK"/*.qdstrm && pack
else
  skip nsys "nsys not found or no GPU"
fi

# --- summary: result files, the table last, the exit status -----------------------------------------
timeout -s INT -k 5 5 "$PY" -m profiling.gpu_check_summary "$WORK"
