#!/usr/bin/env bash
# The GPU check of fused packs, in one call: the CUDA equivalence tests, then the benchmark of
# fused packs against threads. Under 8 minutes on one H200; every step has its own time limit,
# and a step that fails is reported while the next one still runs.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # a GPU machine; OUT_DIR defaults to benchmarks/throughput/
#   bash benchmarks/gpu_check.sh --smoke OUT_DIR    # the same steps on a CPU, tiny sizes (tests/test_gpu_throughput.py)
#
# The smoke runs every strategy a CPU can: the GPU run's threads and fused packs, and processes.
#
# Writes into OUT_DIR: <GPU>-<date>.json, the throughput file the cost model reads (fused figures
# carry "strategy": "fused" and "peak_memory_gib"; rewritten after each phase, so a run cut short
# keeps what it measured), and gpu-check-<date>-<time>.log, everything printed here.
#
# The machine needs Python with torch (2.11 or later), torchvision, numpy, pytest and PyYAML.
# Without pydantic, the wheels in .whl/ (pydantic, pydantic-core, annotated-types,
# typing-inspection, typing-extensions) are installed into /tmp/site first. Nothing is
# downloaded; boto3, nibabel and Prefect are not needed.
set -u
cd "$(dirname "$0")/.."
smoke=""
if [ "${1:-}" = "--smoke" ]; then
  smoke=1
  shift
fi
out="${1:-benchmarks/throughput/}"
mkdir -p "$out"
log="$out/gpu-check-$(date +%F-%H%M%S).log"
exec > >(tee -a "$log") 2>&1
PY="${PYTHON:-$(command -v python || command -v python3)}"
budget="${GPU_CHECK_BUDGET_S:-460}"  # seconds for the whole script: 8 minutes, less a margin
started=$SECONDS
left() { echo $((budget - (SECONDS - started))); }

echo "== gpu_check $(date -u +%FT%TZ) in $PWD, writing $out"
if ! "$PY" -c "import pydantic" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  echo "== installing .whl/*.whl into /tmp/site (no pydantic here)"
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || echo "!! pip install failed"
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
"$PY" - <<'EOF' || echo "!! environment check failed"
import platform
from importlib import metadata
print("python", platform.python_version())
# The installed versions, read without importing each package (torchvision alone costs seconds).
for name, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("numpy", "numpy"), ("pydantic", "pydantic"),
                   ("yaml", "PyYAML"), ("pytest", "pytest")):
    try:
        print(name, metadata.version(dist))
    except metadata.PackageNotFoundError as e:
        print(name, "MISSING:", e)
import torch
print("torch build", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

echo "== 1. fused equivalence tests (tests/test_fused_cuda.py; they skip themselves without CUDA)"
timeout --kill-after=10 180 "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_fused_cuda.py
echo "== tests: exit $? (0 passed, 1 a test failed, 5 none ran: no CUDA, 124 timed out; $((SECONDS - started))s so far)"

echo "== 2. benchmark: fused packs against threads"
if [ -n "$smoke" ]; then
  bench=(--smoke --strategies processes,threads,fused --fused-budget-s 120)
else
  # Threads at 16 cells (the trainer's default) with fewer steps than the full benchmark, no
  # smaller thread packs; fused packs at K = 8, 16, 32, 64 with what time is left.
  bench=(--strategies threads,fused --steps 40 --warmup 8 --budget-s 0 --fused-steps 20)
fi
remaining=$(left)
if [ "$remaining" -lt 90 ]; then
  remaining=90  # the tests overran: the benchmark still gets its minimum
fi
# The benchmark's own limit ends it in time (its fused configurations get what the threads part
# leaves); the outer one is for a benchmark that hangs.
timeout --kill-after=15 "$remaining" \
  "$PY" benchmarks/gpu_throughput.py "${bench[@]}" --time-limit-s "$((remaining - 15))" --out "$out/"
echo "== benchmark: exit $? ($((SECONDS - started))s so far)"

echo "== done in $((SECONDS - started))s; files in $out:"
ls -l "$out" | grep -E "gpu-check|\.json" || true
