"""The sorted, tile-padded group layout (its invariants, on hypothesis-drawn group sizes), the
gathers that move activations through it, and the kernels' walk over the block mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pallas_kernels.metadata import (
  BlockMask,
  group_layout,
  pack_tiles,
  repeat_rows,
  sorted_capacity,
  unpack_tiles,
  visited_tile,
  window_layout,
)

# One compiled program per drawn shape, not one per primitive (eager): hypothesis draws many.
_group_layout = jax.jit(
  lambda ids, num_groups, tile: group_layout(ids, num_groups=num_groups, tile=tile),
  static_argnums=(1, 2),
)


def check_group_layout(ids: np.ndarray, num_groups: int, tile: int):
  """Every invariant of the sorted group layout of ids [rows, N], row by row."""
  layout = jax.tree.map(np.asarray, _group_layout(jnp.asarray(ids), num_groups, tile))
  rows, n = ids.shape
  capacity = sorted_capacity(n, num_groups, tile)
  assert layout.src.shape == (rows, capacity) and layout.slot.shape == (rows, n)
  for r in range(rows):
    src, slot = layout.src[r], layout.slot[r]
    # slot and src are inverse permutations on the real tokens; the rest is padding.
    np.testing.assert_array_equal(src[slot], np.arange(n))
    assert np.sum(src < n) == n and np.all(src[src >= n] == n)
    # Stable sort: groups in id order, tokens in sequence order inside a group.
    real = src[src < n]
    np.testing.assert_array_equal(real, np.argsort(ids[r], kind="stable"))
    for t in range(capacity // tile):
      tokens = src[t * tile : (t + 1) * tile]
      tokens = tokens[tokens < n]
      start, count = layout.mask.start[r, t], layout.mask.count[r, t]
      length = layout.mask.tile_len[r, t]
      assert length == tokens.size
      if tokens.size == 0:  # only tiles past the last group hold no real token
        assert count == 0
        continue
      # Real tokens first, then padding.
      assert np.all(src[t * tile : t * tile + length] < n)
      assert np.all(src[t * tile + length : (t + 1) * tile] == n)
      groups = set(ids[r, tokens].tolist())
      assert len(groups) == 1, f"tile {t} mixes groups {groups}"
      g = groups.pop()
      members = np.flatnonzero(ids[r] == g)
      # A tile visits exactly its group's tiles: a run that holds the group and nothing else.
      assert count == -(-members.size // tile) and start * tile <= t * tile
      assert t < start + count
      run = src[start * tile : (start + count) * tile]
      np.testing.assert_array_equal(np.sort(run[run < n]), members)


# Few examples (each new shape compiles), no deadline, the same examples on every run.
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@st.composite
def group_sizes(draw, max_groups: int = 6, max_tokens: int = 80):
  """(sizes, tile): group sizes summing to >= 1 token, zeros allowed; the tile a power of two.
  Drawn to include the awkward cases: empty groups, one group holding everything, singletons,
  sizes just past a tile."""
  groups = draw(st.integers(1, max_groups))
  tile = draw(st.sampled_from([4, 8, 16]))
  shape = draw(st.sampled_from(["any", "one giant", "singletons", "tile edges"]))
  if shape == "one giant":
    sizes = [0] * groups
    sizes[draw(st.integers(0, groups - 1))] = draw(st.integers(1, max_tokens))
  elif shape == "singletons":
    sizes = [draw(st.integers(0, 1)) for _ in range(groups)]
  elif shape == "tile edges":
    sizes = [
      max(0, tile * draw(st.integers(0, 3)) + draw(st.sampled_from([-1, 0, 1])))
      for _ in range(groups)
    ]
  else:
    sizes = [draw(st.integers(0, max_tokens // groups)) for _ in range(groups)]
  if sum(sizes) == 0:
    sizes[0] = 1
  return sizes, tile


@settings(max_examples=20, **_SETTINGS)
@given(group_sizes(), st.integers(0, 2**16))
@example(([0, 3, 0, 0, 45, 0, 1, 0], 8), 0)  # skewed, and most groups empty
@example(([0, 1, 0], 8), 0)  # one token
def test_group_layout_invariants(drawn, seed):
  """Row 0: a random order of the drawn sizes; row 1: uniform ids (rows are independent)."""
  sizes, tile = drawn
  rng = np.random.default_rng(seed)
  first = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
  second = rng.integers(0, len(sizes), first.size)
  check_group_layout(np.stack([first, second]).astype(np.int32), len(sizes), tile)


def test_capacity_is_enough_in_the_worst_case():
  # Every group one token past a tile boundary wastes tile - 1 slots each.
  tile, num_groups = 8, 5
  ids = np.repeat(np.arange(num_groups), tile + 1)[None].astype(np.int32)
  check_group_layout(ids, num_groups, tile)
  assert sorted_capacity(ids.shape[1], num_groups, tile) >= num_groups * 2 * tile


def test_pack_unpack_round_trip_and_gradients():
  key = jax.random.key(3)
  ids = jax.random.randint(key, (2, 30), 0, 4)  # [B * Hr, N] with B = 2, Hr = 1
  layout = group_layout(ids, num_groups=4, tile=8)
  x = jax.random.normal(jax.random.key(4), (2, 3, 30, 5))  # [B, H, N, D]: shared over heads
  packed = pack_tiles(x, layout)
  assert packed.shape == (2, 3, layout.capacity, 5)
  pad = np.asarray(layout.src) == 30
  np.testing.assert_array_equal(unpack_tiles(packed, layout), x)
  for b in range(2):
    assert np.all(np.asarray(packed[b])[:, pad[b]] == 0)  # padding slots read zeros

  w = jax.random.normal(jax.random.key(5), packed.shape)
  grad = jax.grad(lambda x: jnp.sum(pack_tiles(x, layout) * w))(x)
  want = jax.grad(
    lambda x: jnp.sum(
      jnp.take_along_axis(x, layout.src.reshape(2, 1, -1, 1), axis=2, mode="fill", fill_value=0) * w
    )
  )(x)
  np.testing.assert_allclose(grad, want, rtol=1e-6)
  y = jax.random.normal(jax.random.key(6), packed.shape)
  w2 = jax.random.normal(jax.random.key(7), x.shape)
  grad = jax.grad(lambda y: jnp.sum(unpack_tiles(y, layout) * w2))(y)
  expected = np.zeros(y.shape, np.float32)
  for b in range(2):
    expected[b][:, np.asarray(layout.slot[b])] = np.asarray(w2[b])
  np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_repeat_rows_serves_batch_major_rows():
  ids = jax.random.randint(jax.random.key(8), (2, 40), 0, 3)  # shared routing, B = 2
  mask = group_layout(ids, num_groups=3, tile=8).mask
  wide = repeat_rows(mask, 6)  # 2 batch x 3 heads
  assert wide.indices is None
  for field in ("start", "count", "tile_len"):
    got = np.asarray(getattr(wide, field)).reshape(2, 3, -1)
    for h in range(3):
      np.testing.assert_array_equal(got[:, h], np.asarray(getattr(mask, field)))
  lists = BlockMask(mask.start, mask.count, mask.tile_len, indices=jnp.zeros((2, 5), jnp.int32))
  assert repeat_rows(lists, 6).indices.shape == (6, 5)
  assert repeat_rows(mask, 2) is mask
  with pytest.raises(ValueError, match="2 rows, which must divide the 5"):
    repeat_rows(mask, 5)


@pytest.mark.parametrize("csr", [True, False])
def test_visited_tile_walks_each_tiles_run_from_the_flat_metadata(csr):
  """The kernels' one walk rule, on the flat metadata they read: row r's query tile t visits
  exactly the tiles its run names (CSR lists of a 3D window, or the contiguous runs of
  groups), and steps past the run's end stay inside the index list."""
  if csr:
    one = jax.tree.map(jnp.asarray, window_layout((4, 6, 6), (2, 3, 3), (3, 3, 3)).mask)
    mask = repeat_rows(one, 3)  # rows with different lists: the list offset must matter
    shift = jnp.arange(3, dtype=jnp.int32)[:, None]
    mask = mask._replace(indices=(mask.indices + shift) % one.num_tiles)
  else:
    ids = np.random.default_rng(0).integers(0, 5, (3, 40))
    mask = group_layout(jnp.asarray(ids), num_groups=5, tile=4).mask
  start, count, _, indices = (np.asarray(a) for a in mask.flat_metadata())
  rows, num_tiles = mask.start.shape
  list_len = None if mask.indices is None else mask.indices.shape[-1]
  for r in range(rows):
    for t in range(num_tiles):
      i = r * num_tiles + t
      walk = lambda j, i=i, r=r: (
        visited_tile(start[i], j)
        if list_len is None
        else visited_tile(start[i], j, indices, r * list_len)
      )
      got = [int(walk(j)) for j in range(count[i])]
      if list_len is None:
        expected = list(range(mask.start[r, t], mask.start[r, t] + count[i]))
      else:
        lo = int(mask.start[r, t])
        expected = np.asarray(mask.indices[r, lo : lo + count[i]]).tolist()
      assert got == expected
      if list_len is not None:  # a TPU grid step past the run: still a valid list entry
        assert 0 <= int(walk(count[i] + 100)) < num_tiles
