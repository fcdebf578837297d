"""Fixtures and hooks shared by the tests; the helpers they import live in helpers.py."""

from __future__ import annotations

import os
import zlib

# With libtpu installed (the tpu-compile extra) every process that starts JAX loads it; let the
# xdist workers share it instead of failing on its lockfile.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import pytest
from helpers import is_hardware_refusal

from pallas_kernels import resolve_implementation


@pytest.fixture(autouse=True)
def _skip_kernels_this_backend_cannot_run(request):
  """On CPU every kernel runs interpreted; on a GPU (TPU) machine the TPU (GPU) one is skipped."""
  impl = getattr(getattr(request.node, "callspec", None), "params", {}).get("impl")
  if impl is not None:
    try:
      resolve_implementation(impl)
    except ValueError as e:
      pytest.skip(str(e))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """On a GPU or TPU machine a kernel test whose shape the compiled kernel refuses is skipped
  with the refusal as the reason, not failed; on CPU (interpret mode) it still fails."""
  outcome = yield
  report = outcome.get_result()
  if (
    call.when == "call"
    and call.excinfo is not None
    and jax.default_backend() != "cpu"
    and is_hardware_refusal(call.excinfo.value)
  ):
    report.outcome = "skipped"
    report.longrepr = (
      str(item.path),
      item.location[1] or 0,
      f"Skipped: {jax.default_backend()}: {call.excinfo.value}",
    )


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up the session's basetemp
def pytest_configure(config):
  """A JAX compilation cache shared by the session (and its xdist workers): the train.py /
  sample.py subprocesses and the in-process training runs (tests/test_train_sample.py) compile
  the same programs over and over; the cache cuts a tiny run from ~25 s to ~10 s. Set here,
  before collection imports any test module: the first compile in a process decides whether
  that process uses the cache. A test that sets its own env for a subprocess copies this one."""
  factory = getattr(config, "_tmp_path_factory", None)
  if factory is None:
    return
  base = factory.getbasetemp()
  # Under xdist each worker's base folder sits in the session's: share that one.
  shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
  shared.mkdir(exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(shared))
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


@pytest.fixture
def key(request) -> jax.Array:
  """A key from the test's own id (name and parameters): no two tests share inputs, and a
  failure reproduces under -k, in any order and on any xdist worker."""
  return jax.random.key(zlib.crc32(request.node.nodeid.encode()))
