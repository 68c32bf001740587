#!/usr/bin/env bash
# The one command to run when a GPU is lent (docs/performance.md, "CUDA: what gpu_check.sh expects"):
#
#     bench/gpu_check.sh            # the cuda tests, the host-read counts, both benchmarks at full size
#     bench/gpu_check.sh --quick    # the same with the benchmarks' --quick sizes (about a minute)
#
# 1. the tests marked `cuda` (pytest -m cuda: tests/cuda/test_cuda.py), log in bench/results/gpu-tests.txt
# 2. python bench/host_reads.py --device cuda         -> bench/results/host_reads-cuda.json
# 3. python bench/bench_training.py --device cuda     -> bench/results/training-cuda.json
# 4. python bench/bench_world_model.py --device cuda  -> bench/results/world_model-cuda.json
#
# Every step runs even if one before it failed; the exit status is 1 if any failed, 2 without CUDA.
# PYTHON picks the interpreter (default: python).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
QUICK=""
SUFFIX=""
if [ "${1:-}" = "--quick" ]; then QUICK="--quick"; SUFFIX="-quick"; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg
mkdir -p bench/results
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to $PY (torch.cuda.is_available() is False)" >&2
    exit 2
fi
"$PY" -c "import torch; print('gpu_check:', torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
status=0
step() {  # step NAME COMMAND...: run, report, remember a failure
    local name=$1; shift
    local t0=$SECONDS
    if "$@"; then echo "gpu_check: $name: ok ($((SECONDS - t0)) s)"
    else echo "gpu_check: $name: FAILED ($((SECONDS - t0)) s)" >&2; status=1; fi
}
step "cuda tests" bash -c "set -o pipefail; \"$PY\" -m pytest -q -m cuda -rs tests 2>&1 | tee bench/results/gpu-tests.txt"
step "host reads" "$PY" bench/host_reads.py --device cuda --out "bench/results/host_reads-cuda$SUFFIX.json"
step "training benchmark" "$PY" bench/bench_training.py --device cuda $QUICK --out "bench/results/training-cuda$SUFFIX.json"
step "world-model benchmark" "$PY" bench/bench_world_model.py --device cuda $QUICK \
    --out "bench/results/world_model-cuda$SUFFIX.json"
exit $status
