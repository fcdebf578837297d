#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one script that fits a 15-minute device lease:
#   1. benchmarks/gpu_check.py: compiled pallas_gpu kernels vs the dense reference (forward and
#      gradients, f32 and bf16), then their speed against cuDNN;
#   2. the kernel tests (tests/ files that exercise pallas_gpu), compiled, not interpreted;
#   3. benchmarks/attention.py, presets gpu (group attention, 32K-512K tokens) and gpu_block
#      (the paper's whole block and each branch, up to 576K tokens);
#   4. benchmarks/long_context.py --paper_block: the real MoGAAttention layer (projections, norms,
#      RoPE, router, the three branches) forward at the 580K config's 563,160-token grid.
# Each step has its own time limit (on one H100: 167, 93, 44, 47 and 25 s; the defaults sum to
# 565 s, inside the runner's 600), so a slow one cannot cost the others; every log and JSON goes
# to $OUT (default benchmarks/results/gpu_session). Run from the repository root:
#   bash benchmarks/gpu_session.sh
# PACK=1 packs $OUT into $OUT/gpu_session.tar.gz at the end and removes the loose files (the
# device runner returns at most 8 files).
# A missing pure-Python dependency (ml_collections on the lent machines) can ride along as
# wheels in .whl/; they are installed to a scratch folder, never into the machine's Python.
set -u
OUT="${OUT:-benchmarks/results/gpu_session}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/moga_site .whl/*.whl && export PYTHONPATH="/tmp/moga_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, note the status
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start))s"
  echo "$name exit=$rc seconds=$((SECONDS - start))" >>"$OUT/steps.txt"
  tail -n "${TAIL:-25}" "$OUT/$name.log"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c 'import sys, jax, jaxlib, flax; print(sys.version.split()[0], "jax", jax.__version__,
"flax", flax.__version__, jax.devices())'
} 2>&1 | tee "$OUT/machine.txt"

step gpu_check "${GPU_CHECK_S:-240}" "$PY" benchmarks/gpu_check.py --out "$OUT"
# The kernel tests; each worker takes GPU memory as it needs it, not 75% up front.
KERNEL_TESTS="tests/test_group_attention.py tests/test_window_attention.py
  tests/test_shot_window_attention.py tests/test_pallas_kernels.py tests/test_validation.py
  tests/test_xla_block_sparse.py tests/test_metadata.py tests/test_routing.py"
step kernel_tests "${TESTS_S:-120}" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
  "$PY" -m pytest -q -n 4 -p no:cacheprovider $KERNEL_TESTS
for preset in gpu gpu_block; do
  step "attention_$preset" "${BENCH_S:-80}" "$PY" benchmarks/attention.py \
    --config "configs/attention_bench.py:$preset" --config.out="$OUT/attention_$preset.json"
done
step long_context "${LONG_S:-45}" "$PY" benchmarks/long_context.py --paper_block --groups 20 \
  --out "$OUT/long_context_paper_block.json"
cat "$OUT/steps.txt"
if [[ "${PACK:-0}" == 1 ]]; then
  tar -czf /tmp/gpu_session.tar.gz -C "$OUT" . && rm -rf "${OUT:?}"/* &&
    mv /tmp/gpu_session.tar.gz "$OUT/"
fi
