"""shot_window_attention (STGA) and frame_attention against dense oracles, and their layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, check_against_reference, random_qkv

from pallas_kernels import frame_attention, shot_window_attention
from pallas_kernels.block_sparse.reference import shot_window_visible
from pallas_kernels.metadata import range_mask, shot_window_layout, temporal_key_frames

IMPLEMENTATIONS = ["xla", "pallas_tpu", "pallas_gpu"]


def random_shots(key, batch: int, frames: int, layout: str) -> jax.Array:
  """Non-decreasing shot ids [batch, frames]: a different random layout per batch element."""
  if layout == "one":
    return jnp.zeros((batch, frames), jnp.int32)
  if layout == "singletons":
    return jnp.broadcast_to(jnp.arange(frames, dtype=jnp.int32), (batch, frames))
  cuts = jax.random.bernoulli(key, 0.4, (batch, frames - 1))  # shots of 1, 2, ... frames
  return jnp.concatenate(
    [jnp.zeros((batch, 1), jnp.int32), jnp.cumsum(cuts, axis=1, dtype=jnp.int32)], axis=1
  )


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
  ("grid_shape", "spatial_groups", "temporal_group", "context_frames", "layout", "dtype"),
  [
    ((7, 5, 6), (2, 2), None, 1, "random", jnp.float32),  # odd grid, uneven windows
    ((6, 4, 4), (2, 2), None, 1, "singletons", jnp.float32),  # many one-frame shots
    ((5, 3, 5), (1, 2), None, 2, "random", jnp.float32),  # shots shorter than the context
    ((8, 2, 3), (2, 3), 3, 1, "random", jnp.float32),  # temporal groups inside shots
    ((4, 4, 4), (2, 2), 2, 0, "one", jnp.float32),  # one shot, no context
    ((6, 4, 6), (2, 2), None, 1, "random", jnp.bfloat16),
  ],
)
def test_matches_reference(
  key, impl, grid_shape, spatial_groups, temporal_group, context_frames, layout, dtype
):
  shots = random_shots(jax.random.fold_in(key, 1), 2, grid_shape[0], layout)
  kw = dict(
    grid_shape=grid_shape,
    spatial_groups=spatial_groups,
    temporal_group=temporal_group,
    context_frames=context_frames,
    tile=16,
  )
  attend = lambda q, k, v, impl: shot_window_attention(q, k, v, shots, implementation=impl, **kw)
  check_against_reference(attend, key, (2, int(np.prod(grid_shape)), 2, 16), impl, dtype=dtype)


def test_reference_on_a_worked_example():
  """Shots [0 0 1 1 1 2], one context frame: frame 2 (first of shot 1) sees the last frame of
  shot 0, all of shot 1 and the first frame of shot 2; 1x1 windows so frames are tokens."""
  shots = jnp.array([[0, 0, 1, 1, 1, 2]])
  seen = shot_window_visible(
    shots, grid_shape=(6, 1, 1), spatial_groups=(1, 1), temporal_group=None, context_frames=1
  )[0, 0]
  expected = np.array(
    [
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [0, 1, 1, 1, 1, 1],
      [0, 1, 1, 1, 1, 1],
      [0, 1, 1, 1, 1, 1],
      [0, 0, 0, 0, 1, 1],
    ],
    bool,
  )
  np.testing.assert_array_equal(np.asarray(seen), expected)
  lo, hi = temporal_key_frames(shots, temporal_group=None, context_frames=1)
  np.testing.assert_array_equal(lo[0], [0, 0, 1, 1, 1, 4])
  np.testing.assert_array_equal(hi[0], [3, 3, 6, 6, 6, 6])


@pytest.mark.parametrize("seed", range(6))
def test_layout_ranges_equal_the_definition(seed):
  """The on-device key ranges, mapped back to raster order, are the oracle's mask exactly."""
  rng = np.random.default_rng(seed)
  grid = (int(rng.integers(2, 9)), int(rng.integers(1, 6)), int(rng.integers(1, 6)))
  groups = (int(rng.integers(1, grid[1] + 1)), int(rng.integers(1, grid[2] + 1)))
  temporal_group = [None, 1, 2, 3][seed % 4]
  context = int(rng.integers(0, 3))
  shots = random_shots(jax.random.key(seed), 3, grid[0], "random")
  layout = shot_window_layout(
    shots,
    grid_shape=grid,
    spatial_groups=groups,
    temporal_group=temporal_group,
    context_frames=context,
    tile=8,
  )
  slot = np.asarray(layout.slot[0])
  lo, hi = np.asarray(layout.mask.key_lo), np.asarray(layout.mask.key_hi)
  sees = (slot[None, None, :] >= lo[:, slot][:, :, None]) & (
    slot[None, None, :] < hi[:, slot][:, :, None]
  )
  want = shot_window_visible(
    shots,
    grid_shape=grid,
    spatial_groups=groups,
    temporal_group=temporal_group,
    context_frames=context,
  )[:, 0]
  np.testing.assert_array_equal(sees, np.asarray(want))


@pytest.mark.parametrize("seed", range(4))
def test_range_mask_visits_every_pair_both_ways(seed):
  """Forward runs cover every (query, key) pair a range allows, and the key-side runs are the
  exact transpose of the forward runs, so dk/dv sees every pair that forward did."""
  rng = np.random.default_rng(seed)
  tile, n = 8, int(rng.integers(20, 70))
  capacity = -(-n // tile) * tile
  lo = np.sort(rng.integers(0, n, n))
  hi = np.maximum(np.sort(rng.integers(0, n, n)) + 1, lo + 1)
  hi = np.maximum.accumulate(np.minimum(np.maximum(hi, np.arange(n) + 1), n))
  lo = np.minimum(lo, np.arange(n))
  pad = capacity - n
  padded = lambda a: jnp.asarray(np.pad(a, (0, pad)))[None]
  mask = range_mask(padded(lo), padded(hi), tile=tile, length=n)
  start, count = np.asarray(mask.start[0]), np.asarray(mask.count[0])
  kstart, kcount = np.asarray(mask.key_start[0]), np.asarray(mask.key_count[0])
  forward = {(t, u) for t in range(len(start)) for u in range(start[t], start[t] + count[t])}
  backward = {(t, u) for u in range(len(kstart)) for t in range(kstart[u], kstart[u] + kcount[u])}
  assert forward == backward
  needed = {(i // tile, j // tile) for i in range(n) for j in range(lo[i], hi[i])}
  assert needed <= forward


def test_shot_changes_do_not_recompile(key):
  from pallas_kernels.block_sparse.layout_ops import _attend_pattern

  q, k, v = random_qkv(key, (2, 4 * 2 * 2, 1, 16))
  kw = dict(grid_shape=(4, 2, 2), implementation="xla")
  shot_window_attention(q, k, v, jnp.array([[0, 0, 1, 1], [0, 1, 1, 2]]), **kw)
  before = _attend_pattern._cache_size()
  for shots in ([[0, 0, 0, 0], [0, 1, 2, 3]], [[0, 1, 1, 1], [0, 0, 0, 5]]):
    shot_window_attention(q, k, v, jnp.array(shots), **kw)
  assert _attend_pattern._cache_size() == before


def test_cost_follows_the_windows_not_n_squared():
  """At 16 frames of 16x16 tokens, one shot of 4-frame groups and 2x2 windows visit a small
  fraction of the dense tile pairs."""
  shots = jnp.zeros((1, 16), jnp.int32)
  layout = shot_window_layout(
    shots,
    grid_shape=(16, 16, 16),
    spatial_groups=(2, 2),
    temporal_group=4,
    context_frames=1,
    tile=64,
  )
  pairs = int(layout.mask.count.sum())
  tiles = layout.mask.num_tiles
  # each window-frame is 64 tokens = 1 tile; a query tile sees 4 + up to 2 context frames
  assert pairs <= tiles * 6 and pairs < tiles * tiles / 8


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_frame_attention_is_attention_within_each_frame(key, impl):
  grid = (3, 4, 5)
  q, k, v = random_qkv(key, (2, 60, 2, 16))
  out = frame_attention(q, k, v, grid_shape=grid, implementation=impl, tile=16)
  per_frame = lambda x: x.reshape(2, 3, 20, 2, 16)
  dense = jax.vmap(lambda a, b, c: jax.nn.dot_product_attention(a, b, c), in_axes=1, out_axes=1)(
    per_frame(q), per_frame(k), per_frame(v)
  )
  assert_close(out, dense.reshape(out.shape))


def test_one_shot_one_window_is_full_attention(key):
  q, k, v = random_qkv(key, (1, 4 * 3 * 3, 2, 16))
  out = shot_window_attention(
    q,
    k,
    v,
    jnp.zeros((1, 4), jnp.int32),
    grid_shape=(4, 3, 3),
    spatial_groups=(1, 1),
    implementation="xla",
  )
  assert_close(out, jax.nn.dot_product_attention(q, k, v, implementation="xla"))


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    (
      {"shot_ids": jnp.array([[0, 1, 0]])},
      ValueError,
      r"shot_ids must be non-decreasing along the frames; batch element 0 goes from 1 to 0 "
      r"at frame 2",
    ),
    (
      {"shot_ids": jnp.zeros((1, 4), jnp.int32)},
      ValueError,
      r"shot_ids must have shape \[batch, frames\] = \(1, 3\)",
    ),
    ({"shot_ids": jnp.zeros((1, 3))}, ValueError, r"shot_ids must have an integer dtype"),
    ({"grid_shape": (3, 2, 5)}, ValueError, r"grid_shape \(3, 2, 5\) holds 30 tokens"),
    (
      {"spatial_groups": (3, 1)},
      ValueError,
      r"spatial_groups must be positive and at most the frame's \(H, W\) = \(2, 4\)",
    ),
    ({"spatial_groups": (2,)}, TypeError, r"spatial_groups must be a \(rows, cols\) tuple"),
    ({"temporal_group": 0}, ValueError, r"temporal_group must be >= 1, got 0"),
    ({"context_frames": -1}, ValueError, r"context_frames must be >= 0, got -1"),
    (
      {"implementation": "pallas_gpu", "interpret": False, "backend": "cpu"},
      ValueError,
      r"implementation='pallas_gpu' cannot run on backend 'cpu'",
    ),
  ],
)
def test_bad_input(kwargs, error, match):
  q = jax.random.normal(jax.random.key(3), (1, 24, 2, 16))
  kw = dict(shot_ids=jnp.array([[0, 0, 1]]), grid_shape=(3, 2, 4)) | kwargs
  with pytest.raises(error, match=match):
    shot_window_attention(q, q, q, kw.pop("shot_ids"), **kw)
