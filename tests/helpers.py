"""Test helpers: fresh random inputs (never zeros), dtype- and backend-keyed tolerances, the
kernel-vs-reference check, and the compiled kernels' shape refusals (tests import these;
conftest.py holds fixtures and hooks)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

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


# The compiled kernels' shape rules (block_sparse.dispatch.check_hardware_tiling): interpret mode
# has none, so a test shape chosen for CPU may be one a real chip cannot take.
_HARDWARE_REFUSAL = re.compile(r"^pallas_(gpu|tpu)( \(Triton\))? (needs|addresses) ")


def is_hardware_refusal(error: BaseException) -> bool:
  return isinstance(error, ValueError) and bool(_HARDWARE_REFUSAL.match(str(error)))


def random_qkv(key, shape, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(key, 3)
  return tuple(jax.random.normal(s, shape, jnp.float32).astype(dtype) for s in (kq, kk, kv))


def assert_close(actual, expected, dtype=jnp.float32, what="output", floor: float = 1e-6):
  """max |actual - expected| <= tolerance x max(max |expected|, floor). floor: the smallest
  scale errors are measured against, for results that are exactly zero in exact arithmetic
  (the dq of a one-token group) where rounding leaves ~1e-8."""
  actual = np.asarray(jnp.asarray(actual, jnp.float32))
  expected = np.asarray(jnp.asarray(expected, jnp.float32))
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  assert np.isfinite(actual).all(), (
    f"{what}: {np.size(actual) - np.isfinite(actual).sum()} non-finite elements"
  )
  scale = max(float(np.abs(expected).max()), floor)
  err = float(np.abs(actual - expected).max()) / scale
  assert err < tolerance(dtype), f"{what}: relative error {err:.3g}"


def check_against_reference(
  attend, key, shape, implementation: str, *, dtype=jnp.float32, grads: bool = True, floor=1e-6
):
  """attend(q, k, v, implementation) -> out, checked for `implementation` against "reference":
  the output, and (grads) the gradients of q, k and v through a random cotangent, so that every
  output element matters. Inputs are fresh normal samples of `shape` in `dtype` (never zeros or
  constants: those would hide a wrong grouping); every result must be finite (the Pallas
  interpreter NaN-fills what a kernel never writes, so a missed tile cannot pass as zeros).
  Tolerance by dtype (`tolerance`); floor as in `assert_close`."""
  k_inputs, k_cotangent = jax.random.split(key)
  q, k, v = random_qkv(k_inputs, shape, dtype)
  run = lambda impl: jax.vjp(lambda q, k, v: attend(q, k, v, impl), q, k, v)
  out, backward = run(implementation)
  want, want_backward = run("reference")
  assert out.dtype == q.dtype and out.shape == q.shape, (out.dtype, out.shape)
  assert_close(out, want, dtype, "out", floor)
  if not grads:
    return
  cotangent = jax.random.normal(k_cotangent, out.shape, jnp.float32).astype(out.dtype)
  for name, got, expected in zip("qkv", backward(cotangent), want_backward(cotangent), strict=True):
    assert got.dtype == q.dtype, (name, got.dtype)
    assert_close(got, expected, dtype, f"d{name}", floor)
