"""Bad input to group_attention: a clear error naming the argument, before any tracing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import group_attention, resolve_implementation

# Random, non-constant inputs: with constant q, k, v every grouping gives the same output, so a
# test that compares outputs could not tell one treatment of the ids from another.
_RNG = np.random.default_rng(0)
Q = jnp.asarray(_RNG.normal(size=(2, 10, 3, 8)), jnp.float32)
IDS = jnp.asarray(_RNG.integers(0, 4, size=(2, 10, 3)), jnp.int32)


def call(q=Q, k=Q, v=Q, ids=IDS, **kw):
  kw.setdefault("num_groups", 4)
  return group_attention(q, k, v, ids, **kw)


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"k": jnp.ones((2, 11, 3, 8))}, ValueError, r"k must have the shape of q \(2, 10, 3, 8\)"),
    ({"v": jnp.ones((2, 10, 3, 4))}, ValueError, r"v must have the shape of q"),
    ({"q": jnp.ones((10, 3, 8))}, ValueError, r"q must have shape \[batch, seq, heads, "),
    ({"k": Q.astype(jnp.bfloat16)}, ValueError, r"k must have the dtype of q \(float32\)"),
    ({"q": jnp.ones((2, 10, 3, 8), jnp.int32)}, ValueError, r"q must have a floating dtype"),
    (
      {"ids": jnp.zeros((2, 10, 2), jnp.int32)},
      ValueError,
      r"group_ids must have shape \[batch, seq, heads\] = \(2, 10, 3\).*got \(2, 10, 2\)",
    ),
    ({"ids": jnp.zeros((10,), jnp.int32)}, ValueError, r"group_ids must have shape"),
    (
      {"ids": jnp.zeros((2, 10, 3), jnp.float32)},
      ValueError,
      r"group_ids must have an integer dtype \(int32\), got float32",
    ),
    ({"num_groups": 0}, ValueError, r"num_groups must be >= 1, got 0"),
    ({"num_groups": 2.0}, TypeError, r"num_groups must be an int"),
    (
      {"ids": IDS.at[0, 3, 1].set(4)},
      ValueError,
      r"group_ids must lie in \[0, num_groups=4\), got values in \[0, 4\]",
    ),
    ({"ids": IDS.at[1, 0, 0].set(-1)}, ValueError, r"got values in \[-1, 3\]"),
    ({"tile": 0}, ValueError, r"tile must be >= 1"),
    ({"scale": "big"}, TypeError, r"scale must be a Python float"),
    ({"scale": float("nan")}, ValueError, r"scale must be finite"),
    ({"implementation": "cuda"}, ValueError, r"implementation must be None or one of"),
    ({"interpret": "yes"}, TypeError, r"interpret must be None, a bool or pltpu"),
    ({"q": np.ones((2, 10, 3, 8), np.float32).tolist()}, TypeError, r"q must be an array"),
  ],
)
def test_bad_input(kwargs, error, match):
  with pytest.raises(error, match=match):
    call(**kwargs)


@pytest.mark.parametrize("implementation", ["xla", "reference"])
def test_traced_ids_are_not_range_checked_but_clipped(implementation):
  """Under jit the values are unknown: no error, and out-of-range ids are clipped into range.

  Kills: ids wrapped (9 -> 1, -1 -> 3) instead of clipped (9 -> 3, -1 -> 0); with the old
  all-ones inputs every treatment gave the same output.
  """
  f = jax.jit(lambda ids: call(ids=ids, implementation=implementation))
  base = IDS.at[0, 0, 0].set(2).at[1, 5, 2].set(1)  # neither the clipped nor the wrapped group
  high, low = base.at[0, 0, 0].set(9), base.at[1, 5, 2].set(-1)
  for bad, clipped, wrapped in (
    (high, base.at[0, 0, 0].set(3), base.at[0, 0, 0].set(1)),
    (low, base.at[1, 5, 2].set(0), base.at[1, 5, 2].set(3)),
  ):
    out = np.asarray(f(bad))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, f(clipped), rtol=1e-6, atol=1e-6)
    assert np.abs(out - np.asarray(f(wrapped))).max() > 1e-3  # the inputs tell them apart


def test_none_picks_the_backend_kernel_and_named_kernels_fail_fast():
  assert resolve_implementation(None, backend="cpu") == "xla"  # faster than interpret mode
  # Short sequences: dense masked attention beats any tiled loop.
  assert resolve_implementation(None, backend="gpu", seq=512) == "reference"
  assert resolve_implementation(None, backend="cpu", seq=513) == "xla"
  assert resolve_implementation("xla", backend="cpu", seq=16) == "xla"  # a name is obeyed
  assert resolve_implementation(None, backend="tpu") == "pallas_tpu"
  assert resolve_implementation(None, backend="gpu") == "pallas_gpu"
  assert resolve_implementation("reference", backend="tpu") == "reference"
  # On CPU the kernels run in interpret mode, unless that is refused.
  assert resolve_implementation("pallas_gpu", backend="cpu") == "pallas_gpu"
  for name, platform in (("pallas_tpu", "TPU"), ("pallas_gpu", "GPU")):
    with pytest.raises(
      ValueError,
      match=rf"implementation='{name}' cannot run on backend "
      rf"'cpu': it compiles only for {platform} and "
      r"interpret=False was given",
    ):
      call(implementation=name, interpret=False, backend="cpu")
  with pytest.raises(
    ValueError,
    match=r"cannot run on backend 'tpu': it compiles only for GPU; "
    r"pass interpret=True",
  ):
    resolve_implementation("pallas_gpu", backend="tpu")


def test_interpret_params_only_for_the_tpu_kernel():
  from jax.experimental.pallas import tpu as pltpu

  with pytest.raises(ValueError, match=r"applies to implementation='pallas_tpu' only"):
    call(implementation="xla", interpret=pltpu.InterpretParams())


def test_shared_ids_accepted_as_batch_seq():
  shared = IDS[:, :, 0]
  out = call(ids=shared, implementation="xla", tile=4)
  per_head = call(ids=jnp.repeat(shared[:, :, None], 3, axis=2), implementation="xla", tile=4)
  np.testing.assert_allclose(out, per_head, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  ("impl", "tile", "head_dim", "match"),
  [
    ("pallas_gpu", 24, 64, r"pallas_gpu \(Triton\) needs tokens per tile to be a power of two"),
    ("pallas_gpu", 128, 8, r"needs head_dim to be a power of two >= 16, got 8"),
    ("pallas_tpu", 100, 128, r"pallas_tpu needs tokens per tile to be a multiple of 8"),
  ],
)
def test_compiled_kernels_check_their_tiling(impl, tile, head_dim, match):
  from pallas_kernels.block_sparse.dispatch import check_hardware_tiling

  with pytest.raises(ValueError, match=match):
    check_hardware_tiling(impl, tile=tile, head_dim=head_dim)
  check_hardware_tiling(impl, tile=128, head_dim=128)  # the recommended shape passes


def test_hardware_refusals_are_recognised_for_skipping():
  """conftest skips (on a GPU/TPU machine) exactly the kernels' own shape refusals."""
  from helpers import is_hardware_refusal

  from pallas_kernels.block_sparse.dispatch import check_hardware_tiling

  for impl, kw in (
    ("pallas_gpu", {"tile": 24, "head_dim": 64}),
    ("pallas_gpu", {"tile": 128, "head_dim": 8}),
    ("pallas_gpu", {"tile": 128, "head_dim": 128, "elements": 2**31}),
    ("pallas_tpu", {"tile": 100, "head_dim": 128}),
  ):
    with pytest.raises(ValueError) as refusal:
      check_hardware_tiling(impl, **kw)
    assert is_hardware_refusal(refusal.value), refusal.value
  with pytest.raises(ValueError) as other:
    call(num_groups=0)
  assert not is_hardware_refusal(other.value)
  assert not is_hardware_refusal(TypeError("pallas_gpu needs a bool"))


def test_gpu_tiles_must_fit_shared_memory():
  """float32 tiles of 128 x 128 ask for 320-384 KiB of shared memory (an H200 refused them with
  RESOURCE_EXHAUSTED; a block may have 227 KiB): refused by name, with the tile that fits."""
  from helpers import is_hardware_refusal

  from pallas_kernels.block_sparse.dispatch import check_hardware_tiling

  with pytest.raises(
    ValueError,
    match=r"tile x head_dim x bytes per value <= 32768 .* got 128 x "
    r"128 x 4; use tile=64",
  ) as refusal:
    check_hardware_tiling("pallas_gpu", tile=128, head_dim=128, itemsize=4)
  assert is_hardware_refusal(refusal.value)
  check_hardware_tiling("pallas_gpu", tile=64, head_dim=128, itemsize=4)
  check_hardware_tiling("pallas_gpu", tile=128, head_dim=128, itemsize=2)
  check_hardware_tiling("pallas_gpu", tile=128, head_dim=64, itemsize=4)
  check_hardware_tiling("pallas_tpu", tile=128, head_dim=128, itemsize=4)  # GPU-only rule


@pytest.mark.parametrize(
  ("seq", "impl", "interpret", "head_dim", "dtype", "tile"),
  [
    (8192, "pallas_gpu", False, 128, jnp.float32, 64),  # what fits shared memory
    (8192, "pallas_gpu", False, 128, jnp.bfloat16, 128),
    (8192, "pallas_gpu", False, 64, jnp.float32, 128),
    (8192, "pallas_gpu", False, 256, jnp.bfloat16, 64),
    (100, "pallas_gpu", False, 64, jnp.bfloat16, 128),  # Triton tiles are powers of two
    (40, "pallas_gpu", False, 64, jnp.bfloat16, 64),
    (5, "pallas_gpu", False, 64, jnp.bfloat16, 16),
    (8192, "pallas_gpu", True, 128, jnp.float32, 128),  # interpret mode has no shared memory
    (100, "xla", False, 128, jnp.float32, 104),  # short sequences: rounded up to 8
    (8192, "pallas_tpu", False, 128, jnp.float32, 128),
  ],
)
def test_default_tile(seq, impl, interpret, head_dim, dtype, tile):
  from pallas_kernels.block_sparse.dispatch import check_hardware_tiling, default_tile

  got = default_tile(seq, implementation=impl, interpret=interpret, head_dim=head_dim, dtype=dtype)
  assert got == tile
  if not interpret:
    check_hardware_tiling(impl, tile=got, head_dim=head_dim, itemsize=jnp.dtype(dtype).itemsize)


@pytest.mark.parametrize(("dtype", "tile"), [(jnp.float32, 64), (jnp.bfloat16, 128)])
def test_ops_default_tile_fits_the_gpu_kernel(monkeypatch, dtype, tile):
  """group_attention and shot_window_attention compiled for a GPU pick the tile that fits."""
  from pallas_kernels import shot_window_attention
  from pallas_kernels.block_sparse import layout_ops

  seen = []
  record = lambda *args, **kw: seen.append(kw["tile"])
  monkeypatch.setattr(layout_ops, "_attend_pattern", record)
  q = jax.random.normal(jax.random.key(0), (1, 4 * 16 * 16, 2, 128), dtype)
  on_gpu = dict(implementation="pallas_gpu", interpret=False, backend="gpu")
  group_attention(q, q, q, jnp.zeros(q.shape[:2], jnp.int32), num_groups=2, **on_gpu)
  shot_window_attention(q, q, q, jnp.zeros((1, 4), jnp.int32), grid_shape=(4, 16, 16), **on_gpu)
  assert seen == [tile, tile]


def test_gpu_kernels_refuse_tensors_past_32_bit_offsets():
  """40 heads of 563,160 tokens at head_dim 128 on one GPU: 2.9e9 values per tensor."""
  from pallas_kernels.block_sparse.dispatch import check_hardware_tiling

  with pytest.raises(ValueError, match=r"32-bit offsets, but they hold 2,883,379,200 values"):
    check_hardware_tiling("pallas_gpu", tile=128, head_dim=128, elements=40 * 563_160 * 128)
  check_hardware_tiling("pallas_gpu", tile=128, head_dim=128, elements=5 * 563_160 * 128)
  check_hardware_tiling("pallas_tpu", tile=128, head_dim=128, elements=40 * 563_160 * 128)
