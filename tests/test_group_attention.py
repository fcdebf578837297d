"""group_attention's fast paths against the dense reference: forward and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, random_qkv

from pallas_kernels import group_attention

# Every implementation but the oracle; on CPU the Pallas kernels run in interpret mode.
FAST_IMPLEMENTATIONS = ["xla", "pallas_tpu", "pallas_gpu"]


def _ids_from_sizes(sizes, key):
  """Random token order with exactly sizes[g] tokens in group g (sizes may contain zeros)."""
  ids = np.repeat(np.arange(len(sizes)), sizes)
  return jax.random.permutation(key, jnp.asarray(ids, jnp.int32))


def _loss(impl, ids, num_groups, **kw):
  def f(q, k, v):
    out = group_attention(q, k, v, ids, num_groups=num_groups, implementation=impl, **kw)
    # A fixed random projection makes every output element matter to the gradient.
    w = jax.random.normal(jax.random.key(7), out.shape, jnp.float32)
    return jnp.sum(out.astype(jnp.float32) * w)

  return f


def _check(q, k, v, ids, num_groups, impl, dtype=jnp.float32, grads=True, **kw):
  out = group_attention(q, k, v, ids, num_groups=num_groups, implementation=impl, **kw)
  ref_kw = {"scale": kw["scale"]} if "scale" in kw else {}
  ref = group_attention(q, k, v, ids, num_groups=num_groups, implementation="reference", **ref_kw)
  assert out.dtype == q.dtype and out.shape == q.shape
  assert_close(out, ref, dtype, "out")
  if grads:
    got = jax.grad(_loss(impl, ids, num_groups, **kw), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(_loss("reference", ids, num_groups, **ref_kw), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got, want, strict=True):
      assert g.dtype == q.dtype
      assert_close(g, w, dtype, f"d{name}")


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize(
  ("batch", "seq", "heads", "head_dim", "num_groups", "tile", "shared"),
  [
    (2, 203, 3, 16, 5, 16, False),  # seq not a multiple of the tile, per-head ids
    (1, 150, 4, 8, 3, 32, True),  # ids shared by the heads
    (2, 64, 2, 32, 4, 64, False),  # one tile per group at most
    (1, 97, 1, 16, 40, 8, False),  # more groups than tokens per group: many singletons
  ],
)
def test_matches_reference_random_groups(
  key, impl, batch, seq, heads, head_dim, num_groups, tile, shared
):
  k1, k2 = jax.random.split(key)
  q, k, v = random_qkv(k1, (batch, seq, heads, head_dim))
  ids_shape = (batch, seq) if shared else (batch, seq, heads)
  ids = jax.random.randint(k2, ids_shape, 0, num_groups)
  _check(q, k, v, ids, num_groups, impl, tile=tile)


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize(
  "sizes",
  [
    [120],  # one group holding every token
    [0, 57, 0, 0, 63],  # empty groups around real ones
    [1, 1, 1, 1, 100, 1],  # singletons beside a large group
    [90, 3, 17, 1, 9],  # skewed sizes
    [33, 0, 31, 32, 1],  # sizes straddling the tile
  ],
)
def test_matches_reference_chosen_group_sizes(key, impl, sizes):
  k1, k2 = jax.random.split(key)
  seq = sum(sizes)
  q, k, v = random_qkv(k1, (1, seq, 2, 16))
  ids = _ids_from_sizes(sizes, k2)[None]  # [1, seq], shared by both heads
  _check(q, k, v, ids, len(sizes), impl, tile=16)


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_one_group_equals_full_attention(key, impl):
  q, k, v = random_qkv(key, (2, 130, 4, 32))
  ids = jnp.zeros((2, 130, 4), jnp.int32)
  out = group_attention(q, k, v, ids, num_groups=1, implementation=impl, tile=32)
  full = jax.nn.dot_product_attention(q, k, v, implementation="xla")
  assert_close(out, full)


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_bfloat16(key, impl):
  k1, k2 = jax.random.split(key)
  q, k, v = random_qkv(k1, (1, 180, 2, 32), jnp.bfloat16)
  ids = jax.random.randint(k2, (1, 180, 2), 0, 4)
  _check(q, k, v, ids, 4, impl, dtype=jnp.bfloat16, tile=32)


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_scale(key, impl):
  k1, k2 = jax.random.split(key)
  q, k, v = random_qkv(k1, (1, 70, 2, 16))
  ids = jax.random.randint(k2, (1, 70), 0, 3)
  _check(q, k, v, ids, 3, impl, scale=0.37, tile=16)
  ref = group_attention(q, k, v, ids, num_groups=3, implementation="reference", scale=0.37)
  default = group_attention(q, k, v, ids, num_groups=3, implementation="reference")
  assert not np.allclose(ref, default)  # the scale argument is really used


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_under_jit_with_traced_ids(key, impl):
  k1, k2 = jax.random.split(key)
  q, k, v = random_qkv(k1, (1, 100, 2, 16))
  ids = jax.random.randint(k2, (1, 100, 2), 0, 6)

  @jax.jit
  def f(q, k, v, ids):
    return group_attention(q, k, v, ids, num_groups=6, implementation=impl, tile=16)

  want = group_attention(q, k, v, ids, num_groups=6, implementation="reference")
  assert_close(f(q, k, v, ids), want)


@pytest.mark.slow
@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_default_tile_larger_sequence(key, impl):
  """The default tile (128) and chunking on a sequence long enough for many chunks."""
  k1, k2 = jax.random.split(key)
  q, k, v = random_qkv(k1, (1, 2500, 2, 32))
  ids = jax.random.randint(k2, (1, 2500, 2), 0, 7)
  _check(q, k, v, ids, 7, impl)


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_short_sequence_default_tile(key, impl):
  """Fewer tokens than the default tile: the tile shrinks to the sequence, results stay exact."""
  k1, k2 = jax.random.split(key)
  q, k, v = random_qkv(k1, (2, 21, 2, 8))
  ids = jax.random.randint(k2, (2, 21, 2), 0, 5)
  _check(q, k, v, ids, 5, impl)
