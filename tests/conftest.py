"""Shared test helpers: fresh random inputs (never zeros) and dtype-keyed tolerances."""

from __future__ import annotations

import os
import re
import zlib

# With libtpu installed (the tpu-compile extra) every process that starts JAX loads it; let the
# xdist workers share it instead of failing on its lockfile.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import resolve_implementation

# Max |error| allowed relative to max |reference|, keyed by input dtype.
TOLERANCE = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 1e-2}
# On a GPU, XLA and the Triton kernels both run float32 dots in TF32 (10-bit mantissa) by
# default: kernel vs reference then differ by a few 1e-4 of max |reference| (up to 4.3e-4 seen
# on an H200), so float32 gets TF32's tolerance there. CPU runs keep 1e-5.
GPU_FLOAT32_TOLERANCE = 2e-3


def tolerance(dtype) -> float:
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32 and jax.default_backend() == "gpu":
    return GPU_FLOAT32_TOLERANCE
  return TOLERANCE[dtype]


@pytest.fixture(autouse=True)
def _skip_kernels_this_backend_cannot_run(request):
  """On CPU every kernel runs interpreted; on a GPU (TPU) machine the TPU (GPU) one is skipped."""
  impl = getattr(getattr(request.node, "callspec", None), "params", {}).get("impl")
  if impl is not None:
    try:
      resolve_implementation(impl)
    except ValueError as e:
      pytest.skip(str(e))


# The compiled kernels' shape rules (block_sparse.ops.check_hardware_tiling): interpret mode has
# none, so a test shape chosen for CPU may be one a real chip cannot take.
_HARDWARE_REFUSAL = re.compile(r"^pallas_(gpu|tpu)( \(Triton\))? (needs|addresses) ")


def is_hardware_refusal(error: BaseException) -> bool:
  return isinstance(error, ValueError) and bool(_HARDWARE_REFUSAL.match(str(error)))


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


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """The train.py / sample.py subprocesses the end-to-end tests start compile the same
  programs over and over: a JAX compilation cache shared by the session (and its xdist
  workers) cuts a tiny run from ~25 s to ~10 s. In-process jax (already initialised) is not
  affected; a test that sets its own env for a subprocess copies this one."""
  base = tmp_path_factory.getbasetemp()
  # Under xdist each worker's base folder sits in the session's: share that one.
  shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
  shared.mkdir(exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(shared))


@pytest.fixture
def key(request) -> jax.Array:
  """A key from the test's own id (name and parameters): no two tests share inputs, and a
  failure reproduces under -k, in any order and on any xdist worker."""
  return jax.random.key(zlib.crc32(request.node.nodeid.encode()))


def random_qkv(key, shape, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(key, 3)
  return tuple(jax.random.normal(s, shape, jnp.float32).astype(dtype) for s in (kq, kk, kv))


def assert_close(actual, expected, dtype=jnp.float32, what="output"):
  actual = np.asarray(jnp.asarray(actual, jnp.float32))
  expected = np.asarray(jnp.asarray(expected, jnp.float32))
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  assert np.isfinite(actual).all(), (
    f"{what}: {np.size(actual) - np.isfinite(actual).sum()} non-finite elements"
  )
  scale = max(float(np.abs(expected).max()), 1e-6)
  err = float(np.abs(actual - expected).max()) / scale
  assert err < tolerance(dtype), f"{what}: relative error {err:.3g}"
