# The README's two commands are `make demo` and `make test`; both build .venv first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Parallel test workers (pytest-xdist); CI machines have 2 cores.
JOBS   ?= 2

.PHONY: env demo test test-fast bench bench-demo bench-long bench-interpret lint clean

env: $(STAMP)

$(STAMP): pyproject.toml tools/pick_python.sh
	@python="$$(tools/pick_python.sh)" && echo "make: building $(VENV) with $$python" && \
	  "$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
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

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q

# Everything but the tests marked slow, for quick local iteration.
test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/attention.py --config configs/attention_bench.py:full

bench-long: $(STAMP)
	$(PY) benchmarks/attention.py --config configs/attention_bench.py:long

# The Pallas kernels in CPU interpret mode.
bench-interpret: $(STAMP)
	$(PY) benchmarks/attention.py --config configs/attention_bench.py:interpret

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache benchmarks/results runs
