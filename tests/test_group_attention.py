"""group_attention's fast paths against the dense reference: forward and gradients.

Shapes are ones the compiled kernels take too (head_dim and tiles powers of two >= 16), so the
same tests run compiled on a GPU or TPU; small, so that interpret mode on CPU stays quick."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, check_against_reference, random_qkv

from pallas_kernels import group_attention

# Every implementation but the oracle; on CPU the Pallas kernels run in interpret mode.
FAST_IMPLEMENTATIONS = ["xla", "pallas_tpu", "pallas_gpu"]


def _ids_from_sizes(sizes, key):
  """Random token order with exactly sizes[g] tokens in group g (sizes may contain zeros)."""
  ids = np.repeat(np.arange(len(sizes)), sizes)
  return jax.random.permutation(key, jnp.asarray(ids, jnp.int32))


def grouped(ids, num_groups, **kw):
  """attend(q, k, v, implementation) for check_against_reference."""
  return lambda q, k, v, impl: group_attention(
    q, k, v, ids, num_groups=num_groups, implementation=impl, **kw
  )


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize(
  ("batch", "seq", "heads", "head_dim", "num_groups", "tile", "shared"),
  [
    (2, 203, 3, 16, 5, 16, False),  # seq not a multiple of the tile, per-head ids
    (1, 150, 4, 16, 3, 32, True),  # ids shared by the heads
    (2, 64, 2, 32, 4, 64, False),  # one tile per group at most
    (1, 97, 1, 16, 40, 16, False),  # more groups than tokens per group: many singletons
  ],
)
def test_matches_reference_random_groups(
  key, impl, batch, seq, heads, head_dim, num_groups, tile, shared
):
  ids_shape = (batch, seq) if shared else (batch, seq, heads)
  ids = jax.random.randint(jax.random.fold_in(key, 1), ids_shape, 0, num_groups)
  check_against_reference(
    grouped(ids, num_groups, tile=tile), key, (batch, seq, heads, head_dim), impl
  )


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
@pytest.mark.parametrize(
  "sizes",
  [
    [120],  # one group holding every token
    # Empty groups (first and last too), singletons beside a large group, sizes straddling
    # the tile (16): one layout, one compile.
    [0, 33, 1, 90, 0, 1, 31, 32, 1, 0],
  ],
)
def test_matches_reference_chosen_group_sizes(key, impl, sizes):
  ids = _ids_from_sizes(sizes, jax.random.fold_in(key, 1))[None]  # [1, seq], shared by the heads
  check_against_reference(grouped(ids, len(sizes), tile=16), key, (1, sum(sizes), 2, 16), impl)


def test_one_group_is_full_attention(key):
  """The oracle itself, against plain dense attention (the fast paths are held to the oracle)."""
  q, k, v = random_qkv(key, (2, 130, 4, 32))
  ids = jnp.zeros((2, 130, 4), jnp.int32)
  out = group_attention(q, k, v, ids, num_groups=1, implementation="reference")
  assert_close(out, jax.nn.dot_product_attention(q, k, v, implementation="xla"))


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_bfloat16(key, impl):
  ids = jax.random.randint(jax.random.fold_in(key, 1), (1, 180, 2), 0, 4)
  check_against_reference(grouped(ids, 4, tile=32), key, (1, 180, 2, 32), impl, dtype=jnp.bfloat16)


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_scale(key, impl):
  ids = jax.random.randint(jax.random.fold_in(key, 1), (1, 70), 0, 3)
  check_against_reference(grouped(ids, 3, scale=0.37, tile=16), key, (1, 70, 2, 16), impl)
  q, k, v = random_qkv(key, (1, 70, 2, 16))
  ref = group_attention(q, k, v, ids, num_groups=3, implementation="reference", scale=0.37)
  default = group_attention(q, k, v, ids, num_groups=3, implementation="reference")
  assert not np.allclose(ref, default)  # the scale argument is really used


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_under_jit_with_traced_ids(key, impl):
  q, k, v = random_qkv(key, (1, 100, 2, 16))
  ids = jax.random.randint(jax.random.fold_in(key, 1), (1, 100, 2), 0, 6)

  @jax.jit
  def f(q, k, v, ids):
    return group_attention(q, k, v, ids, num_groups=6, implementation=impl, tile=16)

  want = group_attention(q, k, v, ids, num_groups=6, implementation="reference")
  assert_close(f(q, k, v, ids), want)


@pytest.mark.slow
@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_default_tile_larger_sequence(key, impl):
  """The default tile (128) and chunking on a sequence long enough for many chunks."""
  ids = jax.random.randint(jax.random.fold_in(key, 1), (1, 2500, 2), 0, 7)
  check_against_reference(grouped(ids, 7), key, (1, 2500, 2, 32), impl)


@pytest.mark.parametrize("impl", FAST_IMPLEMENTATIONS)
def test_short_sequence_default_tile(key, impl):
  """Fewer tokens than the default tile: the tile shrinks to the sequence, results stay exact."""
  ids = jax.random.randint(jax.random.fold_in(key, 1), (2, 21, 2), 0, 5)
  check_against_reference(grouped(ids, 5), key, (2, 21, 2, 16), impl)
