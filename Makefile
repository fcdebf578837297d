# The README's two commands are `make demo` and `make test`; both build .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Parallel test workers (pytest-xdist); CI machines have 2 cores. --dist loadgroup: tests that
# share a module fixture (a trained run, made videos, reference models) are marked
# xdist_group and go to one worker, which builds the fixture once; the rest balance freely.
JOBS   ?= 2

.PHONY: env demo test test-main test-parity test-fast bench bench-demo bench-long bench-interpret \
        bench-block bench-580k plan reproduce reproduce-smoke lint clean gpu-check gpu-compile tpu-compile \
        tpu-fit

env: $(STAMP)

$(STAMP): pyproject.toml tools/pick_python.sh
	@python="$$(tools/pick_python.sh)" && echo "make: building $(VENV) with $$python" && \
	  "$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,train,wan,shots,tpu-compile,gpu-compile]'
	@$(PY) -c 'import sys, jax; print(f"make: Python {sys.version.split()[0]}, jax {jax.__version__}")'
	@touch $(STAMP)

# Main job: make synthetic data, train the tiny config (~10 min on 2 cores), sample 2 shots.
DEMO_DIR ?= runs/tiny
demo: $(STAMP)
	$(PY) train.py --config configs/tiny.py --workdir $(DEMO_DIR)
	$(PY) sample.py --config configs/tiny.py --workdir $(DEMO_DIR) \
	  --prompt "a red circle moving right on a blue background" \
	  --prompt "a yellow square moving down on a green background" \
	  --output $(DEMO_DIR)/sample.mp4

# The attention benchmark's quick preset (the demo before the model existed).
bench-demo: $(STAMP)
	$(PY) benchmarks/attention.py --config configs/attention_bench.py:demo

# The first thing to run on a GPU machine: compiled pallas_gpu kernels vs the dense reference,
# then their speed against cuDNN (benchmarks/gpu_check.py). CPU=1: the same on CPU, interpreted.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(if $(CPU),--cpu)

# Registers, spills and shared memory of the GPU kernels compiled for sm_90a here (triton).
gpu-compile: $(STAMP)
	$(PY) -m moga_jax.tools.gpu_compile --head_dim 64 --head_dim 128 \
	  --json_out benchmarks/results/gpu_compile_sm90.json

# Does each Wan config's whole training step fit its TPU slice? (benchmarks/results/tpu_fit.json)
tpu-fit: $(STAMP)
	$(PY) benchmarks/tpu_fit.py

# Compile every attention branch of the big configs for TPU v5e and v6e from this host (libtpu).
tpu-compile: $(STAMP)
	$(PY) -m moga_jax.tools.tpu_compile --config configs/wan14b_moga_580k.py \
	  --json_out benchmarks/results/tpu_compile_580k.json
	$(PY) -m moga_jax.tools.tpu_compile --config configs/wan1_3b_moga.py:stage2 --devices 8 \
	  --json_out benchmarks/results/tpu_compile_1_3b_stage2.json

# The whole suite: ruff (lint + format check), the main tests, then the Wan parity tests.
test: lint test-main test-parity

# --durations=25: CI's log names the slowest tests (setup included), so a test that grew shows.
test-main: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -q --durations=25

# Parity tests need torch + diffusers + transformers (the `parity` extra), never runtime
# dependencies, so they get their own venv. Python 3.11: the CPU build of torch lies on these
# machines' disk for 3.11 only (any other torch is a multi-GB CUDA download); jax there is
# 0.10.2, so this also runs the parity tests on the oldest jax we support.
PARITY_VENV  := .venv-parity
PARITY_STAMP := $(PARITY_VENV)/.installed
PARITY_PY    ?= python3.11

$(PARITY_STAMP): pyproject.toml
	$(PARITY_PY) -m venv $(PARITY_VENV)
	$(PARITY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PARITY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,parity]'
	@touch $(PARITY_STAMP)

# `wan`: the Wan path on torch-free fixtures (tests/test_wan_path.py) runs here too, on this
# venv's oldest jax, as well as in test-main on the newest.
test-parity: $(PARITY_STAMP)
	$(PARITY_VENV)/bin/python -m pytest -n $(JOBS) --dist loadgroup -q -m "parity or wan" --durations=25

# The fast tier (under 5 minutes on 2 cores), for quick local iteration: every module's tests at
# small sizes, kernels interpreted, without the markers below (pyproject.toml says what each
# means): slow (more than a few seconds), subprocess (starts a program: train.py, python -m ...,
# a fresh interpreter) and compile (TPU / GPU compile toolchains). `make test` runs them all.
FAST_TIER := not slow and not subprocess and not compile
test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -q -m "$(FAST_TIER)" --durations=10

bench: $(STAMP)
	$(PY) benchmarks/attention.py --config configs/attention_bench.py:full

bench-long: $(STAMP)
	$(PY) benchmarks/attention.py --config configs/attention_bench.py:long

# The paper's block (MoGA + STGA + per-frame) and each branch, 8K-64K tokens, xla path.
bench-block: $(STAMP)
	$(PY) benchmarks/attention.py --config configs/attention_bench.py:block

# The Pallas kernels in CPU interpret mode.
bench-interpret: $(STAMP)
	$(PY) benchmarks/attention.py --config configs/attention_bench.py:interpret

# One MoGA layer forward at the 580K-token context on this machine (minutes, ~10 GiB).
bench-580k: $(STAMP)
	$(PY) benchmarks/long_context.py

# Tokens, parameters, per-device memory and FLOPs of the paper-scale config; AOT compile.
plan: $(STAMP)
	$(PY) -m moga_jax.tools.plan --config configs/wan14b_moga_580k.py --aot

# The CPU reproduction of the paper's claims (configs/reproduce.py): trains every run, writes
# results/reproduction.json and results/*.png. Resumes where it stopped. `-smoke`: minutes.
reproduce: $(STAMP)
	$(PY) -m moga_jax.reproduction.run --config configs/reproduce.py

reproduce-smoke: $(STAMP)
	$(PY) -m moga_jax.reproduction.run --config configs/reproduce.py:smoke

# Lint and format check (ruff pinned in pyproject.toml); `make test` runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(PARITY_VENV) .pytest_cache runs
	find benchmarks/results -mindepth 1 ! -name tpu_fit.json -delete 2>/dev/null || true
