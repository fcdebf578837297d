"""The xla block-sparse path on its own: work that follows the group sizes, bounded memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import group_attention
from pallas_kernels.block_sparse import xla
from pallas_kernels.metadata import group_layout


def _ranges(ids, num_groups, tile):
  layout = group_layout(ids, num_groups=num_groups, tile=tile)
  return layout, xla._flatten(layout.mask)


@pytest.mark.parametrize(("num_groups", "chunk"), [(1, 4), (16, 4), (16, 16), (5, 3)])
def test_sweep_visits_exactly_the_group_tile_pairs(num_groups, chunk):
  tile, n = 32, 2048
  ids = jax.random.randint(jax.random.key(num_groups), (2, n), 0, num_groups)
  # Make the sizes skewed: half the tokens of row 1 go to group 0.
  ids = ids.at[1, : n // 2].set(0)
  _, ranges = _ranges(ids, num_groups, tile)

  def program(rows):
    c = rows.shape[0]

    def step(carry, cols, live):
      visits, lane_steps = carry
      return visits + live.astype(jnp.int32), lane_steps + 1

    return (jnp.zeros(c, jnp.int32), jnp.zeros(c, jnp.int32)), step, lambda c: c

  visits, lane_steps = jax.jit(lambda r: xla._sweep(r, chunk, program))(ranges)
  sizes = np.stack([np.bincount(np.asarray(r), minlength=num_groups) for r in ids])
  tile_pairs = int(np.sum(np.ceil(sizes / tile) ** 2))
  assert int(visits.sum()) == tile_pairs  # every needed pair once, nothing else
  np.testing.assert_array_equal(visits, ranges.count)
  # Idle lanes are bounded by (chunk - 1) x the longest range, whatever the sizes.
  idle = int(lane_steps.sum()) - tile_pairs
  assert 0 <= idle <= (chunk - 1) * int(ranges.count.max())
  dense_pairs = 2 * (n // tile) ** 2
  if num_groups == 16:
    assert tile_pairs < dense_pairs / 2


def test_memory_is_linear_in_sequence_not_quadratic():
  """Compiled (not run) at 16K tokens: no N x N buffer in the forward or backward pass."""
  n, d = 16384, 32
  spec = jax.ShapeDtypeStruct((1, n, 1, d), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, n), jnp.int32)

  def loss(q, k, v, ids):
    return group_attention(q, k, v, ids, num_groups=8, implementation="xla").sum()

  compiled = (
    jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec, ids).compile()
  )
  stats = compiled.memory_analysis()
  if stats is None:
    pytest.skip("this backend reports no memory analysis")
  scores_bytes = n * n * 4  # one head's float32 score matrix: 1 GiB
  assert stats.temp_size_in_bytes < scores_bytes / 16, stats
