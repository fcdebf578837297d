#!/usr/bin/env bash
# Everything a lent GPU machine is for, in one script that fits a 15-minute device lease. Steps
# (STEPS picks them, in this order; the default three fit 8 minutes on one H100):
#   model_step    benchmarks/model_step.py, preset gpu: the whole Wan 1.3B DiT, one CFG
#                 sampling step and one training step, cuDNN dense vs the paper's block, at
#                 62,400 then 187,200 tokens (rows past its budget are recorded as skipped);
#   profile       benchmarks/profile_attention.py: a jax.profiler trace of group attention at
#                 32K and 524K tokens (G 32, cuDNN dense at 32K beside it) and its summary
#                 (kernel time vs launch / gaps; benchmarks/trace_summary.py);
#   attention_gpu benchmarks/attention.py, preset gpu (group attention, 32K-512K tokens);
#   and, named in STEPS only:
#   gpu_check     compiled pallas_gpu kernels vs the dense reference, then their speed;
#   kernel_tests  the tests/ files that exercise pallas_gpu, compiled, not interpreted;
#   attention_gpu_block  the paper's whole block and each branch, up to 576K tokens;
#   long_context  the real MoGAAttention layer forward at the 580K config's grid.
# Each step has its own time limit (env NAME_S), so a slow one cannot cost the others. Defaults
# and what the steps took on one H100 (results/gpu_h100/steps.txt, 2026-11-26):
#   model_step 320 s (new, not yet run), profile 60 s (new), attention_gpu 60 s (took 44): 440 s
#   of limits, under the 8 minutes with start-up; gpu_check 240 s (took 161-167), kernel_tests
#   120 s (93), attention_gpu_block 80 s (47), long_context 45 s (25).
# The model step's own budget (MODEL_STEP_BUDGET_S, default its limit - 30) stops it starting
# rows and cuts its timed calls in time to write its JSON. On a CPU, to try the script:
# MODEL_STEP_CONFIG=configs/model_step.py:smoke PROFILE_ARGS="--cpu". MODEL_STEP_ARGS (and
# PROFILE_ARGS) add flags to the step's command, e.g.
# "--config.clips=((477,6),)" for the 187,200-token clip alone (a dense training step there is
# about a minute, an estimate: give it a session of its own, STEPS=model_step MODEL_STEP_S=580).
# Every log and JSON goes to $OUT (default benchmarks/results/gpu_session). From the repo root:
#   PACK=1 bash benchmarks/gpu_session.sh
# PACK=1 packs $OUT into $OUT/gpu_session.tar.gz at the end and removes the loose files (the
# device runner returns at most 8 files, at most 2 folders down; the raw profile is deeper).
# A missing pure-Python dependency (ml_collections on the lent machines) can ride along as
# wheels in .whl/; they are installed to a scratch folder, never into the machine's Python.
# ml_collections (1.1.0 here; absl-py and PyYAML, which it needs, are there) is what
# model_step.py and attention.py need; profile_attention.py runs without it. Prepared here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl ml_collections==1.1.0
# then the device call carries .whl and runs `PACK=1 bash benchmarks/gpu_session.sh`.
set -u
OUT="${OUT:-benchmarks/results/gpu_session}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-model_step profile attention_gpu}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/moga_site .whl/*.whl && export PYTHONPATH="/tmp/moga_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, note the status
  local name=$1 limit=$2; shift 2
  if ! wanted "$name"; then
    return 0
  fi
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
  echo "steps: $STEPS"
} 2>&1 | tee "$OUT/machine.txt"

MODEL_STEP_S="${MODEL_STEP_S:-320}"
# XLA takes 75% of the GPU's memory by default; the whole model at 187,200 tokens needs more.
# shellcheck disable=SC2086  # MODEL_STEP_ARGS is a list of flags
step model_step "$MODEL_STEP_S" env XLA_PYTHON_CLIENT_MEM_FRACTION="${MEM_FRACTION:-0.95}" \
  "$PY" benchmarks/model_step.py --config "${MODEL_STEP_CONFIG:-configs/model_step.py:gpu}" \
  --config.budget_s="${MODEL_STEP_BUDGET_S:-$((MODEL_STEP_S - 30))}" \
  --json_out "$OUT/model_step.json" ${MODEL_STEP_ARGS:-}
# shellcheck disable=SC2086  # PROFILE_ARGS is a list of flags
step profile "${PROFILE_S:-60}" "$PY" benchmarks/profile_attention.py --out "$OUT" \
  ${PROFILE_ARGS:-}
step attention_gpu "${BENCH_S:-60}" "$PY" benchmarks/attention.py \
  --config configs/attention_bench.py:gpu --config.out="$OUT/attention_gpu.json"
step gpu_check "${GPU_CHECK_S:-240}" "$PY" benchmarks/gpu_check.py --out "$OUT"
# The kernel tests; each worker takes GPU memory as it needs it, not 75% up front.
KERNEL_TESTS="tests/test_group_attention.py tests/test_window_attention.py
  tests/test_shot_window_attention.py tests/test_pallas_kernels.py tests/test_validation.py
  tests/test_xla_block_sparse.py tests/test_metadata.py tests/test_routing.py"
# shellcheck disable=SC2086  # KERNEL_TESTS is a list of files
step kernel_tests "${TESTS_S:-120}" env XLA_PYTHON_CLIENT_PREALLOCATE=false \
  "$PY" -m pytest -q -n 4 -p no:cacheprovider $KERNEL_TESTS
step attention_gpu_block "${BLOCK_S:-80}" "$PY" benchmarks/attention.py \
  --config configs/attention_bench.py:gpu_block --config.out="$OUT/attention_gpu_block.json"
step long_context "${LONG_S:-45}" "$PY" benchmarks/long_context.py --paper_block --groups 20 \
  --out "$OUT/long_context_paper_block.json"
cat "$OUT/steps.txt"
if [[ "${PACK:-0}" == 1 ]]; then
  tar -czf /tmp/gpu_session.tar.gz -C "$OUT" . && rm -rf "${OUT:?}"/* &&
    mv /tmp/gpu_session.tar.gz "$OUT/"
fi
