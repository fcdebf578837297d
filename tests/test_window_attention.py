"""window_attention against its dense oracle, and its layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, check_against_reference, random_qkv

from pallas_kernels import window_attention
from pallas_kernels.metadata import window_layout

IMPLEMENTATIONS = ["xla", "pallas_tpu", "pallas_gpu"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
  ("grid_shape", "tile", "window", "heads", "dtype"),
  [  # 16 tokens per tile: a tile the compiled kernels take too
    ((3, 5, 6), (2, 2, 4), (3, 3, 3), 2, jnp.float32),  # partial tiles on every axis
    ((4, 4, 8), (2, 2, 4), (1, 3, 1), 1, jnp.float32),  # divisible grid, 1D window
    ((2, 6, 6), (1, 4, 4), (3, 1, 5), 3, jnp.float32),  # window wider than the grid
    ((3, 4, 5), (4, 2, 2), (3, 3, 3), 2, jnp.bfloat16),  # a tile deeper than the grid
  ],
)
def test_matches_reference(key, impl, grid_shape, tile, window, heads, dtype):
  kw = dict(grid_shape=grid_shape, tile=tile, window=window)
  attend = lambda q, k, v, impl: window_attention(q, k, v, implementation=impl, **kw)
  check_against_reference(attend, key, (2, int(np.prod(grid_shape)), heads, 16), impl, dtype=dtype)


def test_whole_grid_window_is_full_attention(key):
  q, k, v = random_qkv(key, (1, 48, 2, 16))
  out = window_attention(
    q, k, v, grid_shape=(2, 4, 6), tile=(1, 2, 2), window=(9, 9, 9), implementation="xla"
  )
  assert_close(out, jax.nn.dot_product_attention(q, k, v, implementation="xla"))


def test_window_layout_invariants():
  grid_shape, tile, window = (3, 5, 7), (2, 2, 3), (3, 1, 3)
  src, slot, mask = window_layout(grid_shape, tile, window)
  n, tile_size = 105, 12
  np.testing.assert_array_equal(src[0][slot[0]], np.arange(n))
  tiles_per_axis = (2, 3, 3)
  coords = np.stack(np.unravel_index(np.arange(n), grid_shape), -1) // np.asarray(tile)
  for t in range(mask.start.shape[1]):
    members = src[0, t * tile_size : (t + 1) * tile_size]
    length = mask.tile_len[0, t]
    assert np.all(members[:length] < n) and np.all(members[length:] == n)
    tc = np.unravel_index(t, tiles_per_axis)
    assert np.all(coords[members[:length]] == tc)  # every member lies in this tile
    visits = mask.indices[0, mask.start[0, t] : mask.start[0, t] + mask.count[0, t]]
    assert np.all(np.diff(visits) > 0) and t in visits
    for u in visits:  # within the window, and the pattern is symmetric
      uc = np.unravel_index(u, tiles_per_axis)
      assert all(abs(a - b) <= w // 2 for a, b, w in zip(tc, uc, window, strict=True))
      back = mask.indices[0, mask.start[0, u] : mask.start[0, u] + mask.count[0, u]]
      assert t in back


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    (
      {"grid_shape": (2, 3, 3)},
      ValueError,
      r"grid_shape \(2, 3, 3\) holds 18 tokens but q has seq = 24",
    ),
    ({"grid_shape": (2, 12)}, TypeError, r"grid_shape must be a \(t, h, w\) tuple of 3 ints"),
    ({"tile": (1, 0, 2)}, ValueError, r"tile must hold positive sizes, got \(1, 0, 2\)"),
    ({"window": (1.0, 3, 3)}, TypeError, r"window must be a \(t, h, w\) tuple"),
    (
      {"implementation": "pallas_tpu", "interpret": False, "backend": "cpu"},
      ValueError,
      r"implementation='pallas_tpu' cannot run on backend 'cpu'",
    ),
  ],
)
def test_bad_input(key, kwargs, error, match):
  q = jax.random.normal(key, (1, 24, 2, 16))
  kw = dict(grid_shape=(2, 3, 4), tile=(1, 2, 2), window=(3, 3, 3)) | kwargs
  with pytest.raises(error, match=match):
    window_attention(q, q, q, **kw)
