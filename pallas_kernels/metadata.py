"""Tile layouts: where every token goes, and which key tiles each query tile visits.

Both branches of MoGA are block-sparse only after a permutation:
- groups (`group_layout`, on device, every step): tokens are stably sorted by group id and every
  group is padded up to whole tiles, so each tile holds one group and "attend within my group"
  becomes "visit the contiguous run of tiles my group owns";
- windows (`window_layout`, on the host, once per shape): tokens of a (T, H, W) grid are cut
  into 3D tiles, and a tile visits the tiles within the window around it.

A `TileLayout` holds the permutation and the `BlockMask` every kernel reads; `pack_tiles` and
`unpack_tiles` move activations in and out. Every implementation and the MoGA module share
these helpers; nothing else in the code base re-implements the permutation.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.common import cdiv  # re-exported: moga_jax imports it from here


def cdiv_array(a: jax.Array, b: int) -> jax.Array:
  return (a + (b - 1)) // b


def sorted_capacity(seq_len: int, num_groups: int, tile: int) -> int:
  """Static length of the sorted buffer: every group padded to the tile, in the worst case.

  At most min(num_groups, seq_len) groups are non-empty and each wastes at most tile - 1 slots.
  """
  return cdiv(seq_len + min(num_groups, seq_len) * (tile - 1), tile) * tile


class WorkShare(NamedTuple):
  """Part `index` of `count` of an attention's work, for context parallelism past the head
  count: `count` devices that all hold the whole sequence of the same heads each compute the
  queries of one share, and the shares' outputs add up to the whole (each is 0 elsewhere).

  The shares follow the attention's independent units, so that a share's queries read only its
  own keys or whole key runs: groups (group g goes to share g * count // num_groups: contiguous
  blocks of groups) and contiguous runs of a static layout's slots (STGA's window-major order,
  per-frame attention's frames: slot i of n goes to share i * count // n). `index` may be
  traced (a mesh axis index); `count` is static.
  """

  index: jax.Array | int
  count: int

  def owns_group(self, group: jax.Array, num_groups: int) -> jax.Array:
    return group * self.count // num_groups == self.index

  def owns_slot(self, slot: jax.Array, length: int) -> jax.Array:
    """Whether slot (of a layout of `length` real slots) is this share's; padding is not."""
    return (slot < length) & (jnp.minimum(slot, length - 1) * self.count // length == self.index)


class BlockMask(NamedTuple):
  """Which key tiles each query tile visits: the metadata every block-sparse kernel reads.

  Activations are [rows, num_tiles * tile, D], rows being (batch x heads) sequences. For row r
  and query tile t, the tile visits count[r, t] key tiles:
    indices is None (a contiguous run, as in the group branch): start[r, t] + j, j < count;
    otherwise (CSR lists, as in the window branch): indices[r, start[r, t] + j], j < count.
  tile_len[r, t] is the number of real tokens at the start of tile t; the rest of the tile is
  padding, masked as keys and ignored as queries. Tiles with count 0 are never computed.

  Range masks (`range_mask`: STGA, per-frame attention) also say, per query slot, which keys
  it sees inside the visited tiles: the slots [key_lo, key_hi) of its row ([rows, L] int32; an
  empty range marks a padding query). Their pattern need not be symmetric, so they carry the
  runs the backward pass walks from the key side: key tile u is read by the query tiles
  key_start[r, u] + j, j < key_count[r, u]. Without them the pattern must be symmetric (t
  visits u exactly when u visits t) and the backward pass walks the forward lists.
  """

  start: jax.Array
  count: jax.Array
  tile_len: jax.Array
  indices: jax.Array | None = None
  key_lo: jax.Array | None = None
  key_hi: jax.Array | None = None
  key_start: jax.Array | None = None
  key_count: jax.Array | None = None

  @property
  def num_tiles(self) -> int:
    return self.start.shape[-1]

  @property
  def has_ranges(self) -> bool:
    return self.key_lo is not None

  def range_operands(self) -> tuple[jax.Array, ...]:
    """The per-query key ranges as [rows, L, 1] kernel operands ([tile, 1] blocks beside the
    queries, like the log-sum-exp), or () for masks without ranges."""
    if not self.has_ranges:
      return ()
    return (self.key_lo[..., None], self.key_hi[..., None])

  def transposed(self) -> BlockMask:
    """The lists the dk/dv pass walks: for each key tile, the query tiles that read it."""
    if self.key_start is None:
      return self
    return self._replace(start=self.key_start, count=self.key_count, indices=None)

  def flat_metadata(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(start, count, tile_len, indices) as flat int32 vectors: what a Pallas kernel reads by
    scalar index (SMEM on TPU, global memory on GPU). Entry (r, t) of the per-tile arrays is
    r * num_tiles + t; a contiguous mask gets a one-element dummy index list."""
    indices = jnp.zeros((1,), jnp.int32) if self.indices is None else self.indices.reshape(-1)
    return (self.start.reshape(-1), self.count.reshape(-1), self.tile_len.reshape(-1), indices)


def visited_tile(start, j, indices=None, list_offset=0):
  """The tile visited at step j of a run that begins at `start`: start + j when the mask's runs
  are contiguous (indices None), else entry list_offset + start + j of the flat index list (an
  array or a kernel's ref). The entry is clamped to the list, so a step past the end of a run
  (a TPU grid walks every tile to the longest count; the XLA sweep computes dead lanes) still
  reads a valid one. The one copy of this rule for every implementation."""
  if indices is None:
    return start + j
  return indices[jnp.minimum(list_offset + start + j, indices.shape[0] - 1)]


def range_mask(key_lo: jax.Array, key_hi: jax.Array, *, tile: int, length: int) -> BlockMask:
  """The block mask of per-query key ranges, built on device (shapes are static).

  key_lo, key_hi: int [R, L] with L a multiple of `tile`: query slot i of row r sees the key
  slots [key_lo, key_hi) of its row. Slots at or past `length` are padding; padding queries
  must have empty ranges, and ranges never reach padding keys. Over the real queries, both
  bounds must be non-decreasing along the row (true whenever the layout orders tokens so that
  each one's keys are one contiguous run, as `shot_window_layout` does): then every query tile
  visits one contiguous run of key tiles, and so does every key tile in the backward pass.
  """
  rows, capacity = key_lo.shape
  num_tiles = capacity // tile
  lo, hi = key_lo.astype(jnp.int32), key_hi.astype(jnp.int32)
  real = lo < hi
  first = jnp.where(real, lo, capacity).reshape(rows, num_tiles, tile).min(-1)  # [R, nt]
  last = jnp.where(real, hi, 0).reshape(rows, num_tiles, tile).max(-1)
  used = last > 0
  first_tile = first // tile
  count = jnp.where(used, cdiv_array(last, tile) - first_tile, 0)
  # Key side: tile u is read by the query tiles whose [first, last) meets [u * tile, (u+1) *
  # tile). Both bounds are sorted once tiles without queries take their neighbours' bounds
  # (padding at the end; with a `WorkShare`, the tiles of other devices' queries before and
  # after this device's run), so those tiles are the run between two searches.
  first = jax.lax.cummin(jnp.where(used, first, capacity), axis=1, reverse=True)
  last = jax.lax.cummax(jnp.where(used, last, 0), axis=1)
  edges = jnp.arange(num_tiles, dtype=jnp.int32) * tile
  # compare_all, not the default scan: XLA:TPU v6e offloads the scan's gathers to SparseCore
  # and fails to compile it at 1,463 tiles (an internal RET_CHECK, libtpu 0.0.50.1); an
  # [nt, nt] comparison is cheap next to the attention it plans.
  search = lambda a, v, side: jnp.searchsorted(a, v, side=side, method="compare_all")
  key_start = jax.vmap(lambda a: search(a, edges, "right"))(last)
  key_end = jax.vmap(lambda a: search(a, edges + tile, "left"))(first)
  tile_len = jnp.clip(length - edges, 0, tile)
  return BlockMask(
    start=jnp.where(used, first_tile, 0).astype(jnp.int32),
    count=count.astype(jnp.int32),
    tile_len=jnp.broadcast_to(tile_len, (rows, num_tiles)).astype(jnp.int32),
    key_lo=lo,
    key_hi=hi,
    key_start=key_start.astype(jnp.int32),
    key_count=jnp.maximum(key_end - key_start, 0).astype(jnp.int32),
  )


def repeat_rows(mask: BlockMask, rows: int) -> BlockMask:
  """The mask with one row per activation row: mask row i serves the `rows // mask_rows`
  consecutive activation rows from i * rows // mask_rows, as every kernel reads it (so 1 row
  serves all, and batch rows serve batch x heads rows laid out batch-major)."""
  mask_rows = mask.start.shape[0]
  if rows % mask_rows:
    raise ValueError(
      f"the block mask has {mask_rows} rows, which must divide the {rows} activation rows"
    )
  if rows == mask_rows:
    return mask
  return BlockMask(*(None if a is None else jnp.repeat(a, rows // mask_rows, axis=0) for a in mask))


class TileLayout(NamedTuple):
  """A permutation of one or more sequences into padded tiles, and its block mask (a pytree).

  Rows are independent sequences (batch x routed heads; 1 row for a window layout, shared by
  all). With R rows of N tokens, capacity L and L // tile tiles per row:

  src:  [R, L] token index that fills each slot, N for a padding slot.
  slot: [R, N] slot that each token moves to (the inverse of `src`).
  mask: which key tiles each tile visits (`BlockMask`, [R, num_tiles] fields).
  """

  src: jax.Array
  slot: jax.Array
  mask: BlockMask

  @property
  def capacity(self) -> int:
    return self.src.shape[-1]


def group_layout(
  group_ids: jax.Array, *, num_groups: int, tile: int, share: WorkShare | None = None
) -> TileLayout:
  """Builds the sorted, tile-padded layout of `group_ids` [R, N] (int, values in [0, G)).

  The sort is stable, so tokens keep their sequence order inside a group. Ids outside
  [0, num_groups) must have been rejected (or clipped) by the caller. The capacity is static
  (`sorted_capacity`); a tile of group g visits the contiguous run of tiles g owns (symmetric:
  a group's query and key tiles coincide) and tiles past the last group have count 0.
  share: only the groups `share.groups(num_groups)` owns get visits (the others' tiles count
  0, as if unused): the layout of one device's part of the work (`WorkShare`).
  """
  if group_ids.ndim != 2:
    raise ValueError(f"group_ids must be [rows, seq], got shape {group_ids.shape}")
  rows, n = group_ids.shape
  capacity = sorted_capacity(n, num_groups, tile)
  num_tiles = capacity // tile
  ids = group_ids.astype(jnp.int32)

  counts = jax.vmap(lambda r: jnp.bincount(r, length=num_groups))(ids).astype(jnp.int32)
  padded = cdiv_array(counts, tile) * tile
  start = _exclusive_cumsum(counts)  # where each group begins in the unpadded sorted order
  padded_start = _exclusive_cumsum(padded)  # ... and in the padded one

  order = jnp.argsort(ids, axis=-1, stable=True)  # [R, N]: sorted position -> token
  sorted_ids = jnp.take_along_axis(ids, order, axis=-1)
  rank = jnp.arange(n, dtype=jnp.int32) - jnp.take_along_axis(start, sorted_ids, axis=-1)
  sorted_slot = jnp.take_along_axis(padded_start, sorted_ids, axis=-1) + rank

  row = jnp.arange(rows)[:, None]
  slot = jnp.zeros((rows, n), jnp.int32).at[row, order].set(sorted_slot)
  src = jnp.full((rows, capacity), n, jnp.int32).at[row, sorted_slot].set(order.astype(jnp.int32))

  # Owner group of every tile: the number of groups whose padded run ends at or before it.
  padded_end = padded_start + padded
  tile_first_slot = jnp.arange(num_tiles, dtype=jnp.int32) * tile
  owner = jax.vmap(lambda e: jnp.searchsorted(e, tile_first_slot, side="right"))(padded_end)
  in_use = owner < num_groups
  owner = jnp.minimum(owner, num_groups - 1)
  if share is not None:
    in_use &= share.owns_group(owner, num_groups)
  take = lambda a: jnp.take_along_axis(a, owner, axis=-1)
  group_end = take(padded_start) + take(counts)
  mask = BlockMask(
    start=jnp.where(in_use, take(padded_start) // tile, 0).astype(jnp.int32),
    count=jnp.where(in_use, take(padded) // tile, 0).astype(jnp.int32),
    tile_len=jnp.where(in_use, jnp.clip(group_end - tile_first_slot, 0, tile), 0).astype(jnp.int32),
  )
  return TileLayout(src, slot, mask)


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
  return jnp.cumsum(x, axis=-1) - x


def window_layout(
  grid_shape: tuple[int, int, int], tile: tuple[int, int, int], window: tuple[int, int, int]
) -> TileLayout:
  """Host-built layout of a raster-ordered (T, H, W) token grid cut into 3D tiles.

  Tile coordinates are (t // tile[0], h // tile[1], w // tile[2]); a tile visits every tile
  whose coordinates differ by at most window[a] // 2 on each axis a (a symmetric pattern). Grid
  sizes need not divide by the tile: edge tiles are partial, their real tokens first. Returns
  numpy arrays with one row; callers broadcast it over batch and heads.
  """
  return TileLayout(*_window_layout(tuple(grid_shape), tuple(tile), tuple(window)))


@functools.lru_cache(maxsize=64)
def _window_layout(grid_shape, tile, window):
  tiles_per_axis = [cdiv(g, t) for g, t in zip(grid_shape, tile, strict=True)]
  num_tiles, tile_size = math.prod(tiles_per_axis), math.prod(tile)
  n = math.prod(grid_shape)

  coords = np.stack(np.meshgrid(*(np.arange(g) for g in grid_shape), indexing="ij"), -1)
  coords = coords.reshape(n, 3)  # raster order
  tile_coords = coords // np.asarray(tile)
  tile_index = np.ravel_multi_index(tile_coords.T, tiles_per_axis)
  order = np.argsort(tile_index, kind="stable")  # tile order, raster order inside a tile
  tile_len = np.bincount(tile_index, minlength=num_tiles)
  rank = np.arange(n) - (np.cumsum(tile_len) - tile_len)[tile_index[order]]
  slot = np.empty(n, np.int32)
  slot[order] = tile_index[order] * tile_size + rank
  src = np.full(num_tiles * tile_size, n, np.int32)
  src[slot] = np.arange(n)

  radius = np.asarray(window) // 2
  grid = np.stack(np.meshgrid(*(np.arange(t) for t in tiles_per_axis), indexing="ij"), -1)
  grid = grid.reshape(num_tiles, 3)
  near = np.all(np.abs(grid[:, None, :] - grid[None, :, :]) <= radius, axis=-1)  # [nt, nt]
  count = near.sum(axis=1)
  start = np.cumsum(count) - count
  indices = np.nonzero(near)[1]  # row-major: each tile's neighbours in ascending tile order
  mask = BlockMask(
    start[None].astype(np.int32),
    count[None].astype(np.int32),
    tile_len[None].astype(np.int32),
    indices[None].astype(np.int32),
  )
  return src[None], slot[None], mask


# --- Moving activations in and out of the sorted layout ------------------------------------
#
# x is [B, H, N, D] and the layout has R = B * Hr rows with Hr in {1, H}: with Hr = 1 (routing
# shared by the heads) one permutation serves every head. Packing is a gather by `src` (padding
# slots read zeros) and unpacking a gather by `slot`; each is the other's transpose, so both
# gradients are gathers as well, never scatters.


def _row_indices(indices: jax.Array, batch: int) -> jax.Array:
  """[R, M] with R in {1, B, B * H} -> [B or 1, R // B or 1, M, 1], broadcastable against
  [B, H, *, D]."""
  indices = jnp.asarray(indices)
  if indices.shape[0] == 1:
    return indices[None, :, :, None]
  return indices.reshape(batch, -1, indices.shape[-1])[..., None]


def _pack(x: jax.Array, layout: TileLayout) -> jax.Array:
  idx = _row_indices(layout.src, x.shape[0])
  return jnp.take_along_axis(x, idx, axis=2, mode="fill", fill_value=0)


def _unpack(y: jax.Array, layout: TileLayout) -> jax.Array:
  idx = _row_indices(layout.slot, y.shape[0])
  return jnp.take_along_axis(y, idx, axis=2, mode="promise_in_bounds")


def _with_transpose(gather, transpose, doc: str):
  """`gather` with `transpose` as its VJP: the default VJP of a gather would be a scatter."""

  @jax.custom_vjp
  def op(x: jax.Array, layout: TileLayout) -> jax.Array:
    return gather(x, layout)

  op.defvjp(
    lambda x, layout: (gather(x, layout), layout), lambda layout, g: (transpose(g, layout), None)
  )
  op.__doc__ = doc
  return op


pack_tiles = _with_transpose(
  _pack, _unpack, "[B, H, N, D] in sequence order -> [B, H, L, D] sorted and padded."
)
unpack_tiles = _with_transpose(
  _unpack, _pack, "[B, H, L, D] sorted and padded -> [B, H, N, D] in sequence order."
)


# --- STGA and per-frame attention: key ranges after a static reordering -------------------


class ShotWindowOrder(NamedTuple):
  """The static part of a shot-window layout (numpy, built once per shape on the host).

  Tokens of a raster (T, H, W) grid are ordered by (spatial window, t, h, w), so a window's
  tokens of one frame form one block of `size` slots and its frames follow each other. Per slot
  of the padded sequence: the source token (`src`, N for padding), the slot of each token
  (`slot`), and the slot's frame, its window's first slot and its window's tokens per frame
  (size 0 for padding slots, which then get empty key ranges).
  """

  src: np.ndarray  # [1, L]
  slot: np.ndarray  # [1, N]
  frame: np.ndarray  # [L]
  window_base: np.ndarray  # [L]
  window_size: np.ndarray  # [L]


def spatial_window_ids(height: int, width: int, spatial_groups: tuple[int, int]) -> np.ndarray:
  """[H, W] window index of every position: an even split into sh x sw windows (row-major);
  windows differ by at most one row or column where H or W does not divide."""
  sh, sw = spatial_groups
  rows = np.arange(height) * sh // height
  cols = np.arange(width) * sw // width
  return rows[:, None] * sw + cols[None, :]


@functools.lru_cache(maxsize=64)
def shot_window_order(
  grid_shape: tuple[int, int, int], spatial_groups: tuple[int, int], tile: int
) -> ShotWindowOrder:
  frames, height, width = grid_shape
  n = frames * height * width
  capacity = cdiv(n, tile) * tile
  window = np.tile(spatial_window_ids(height, width, spatial_groups).reshape(-1), frames)
  order = np.argsort(window, kind="stable")  # window-major, raster order inside a window
  per_frame = np.bincount(window[: height * width], minlength=math.prod(spatial_groups))
  base = frames * (np.cumsum(per_frame) - per_frame)
  src = np.full(capacity, n, np.int32)
  src[:n] = order
  slot = np.empty(n, np.int32)
  slot[order] = np.arange(n)
  pad = capacity - n
  token_frame = np.arange(n) // (height * width)
  fill = lambda a: np.concatenate([a[order], np.zeros(pad, np.int32)]).astype(np.int32)
  return ShotWindowOrder(
    src[None], slot[None], fill(token_frame), fill(base[window]), fill(per_frame[window])
  )


def temporal_key_frames(
  shot_ids: jax.Array, *, temporal_group: int | None, context_frames: int
) -> tuple[jax.Array, jax.Array]:
  """[lo, hi) latent frames whose keys frame t's queries see: [B, T] each (on device).

  Temporal groups are the maximal runs of equal shot ids, cut into pieces of `temporal_group`
  frames counted from each run's first frame when it is set. A frame sees its own group plus
  the last `context_frames` frames of the previous group and the first `context_frames` of the
  next one (fewer where those groups are shorter).
  """
  _, frames = shot_ids.shape
  t = jnp.arange(frames, dtype=jnp.int32)[None]
  change = jnp.concatenate(
    [jnp.ones_like(shot_ids[:, :1], bool), shot_ids[:, 1:] != shot_ids[:, :-1]], axis=1
  )
  new_group = change
  if temporal_group is not None:
    run_start = jax.lax.cummax(jnp.where(change, t, 0), axis=1)
    new_group = change | ((t - run_start) % temporal_group == 0)
  group_start = jax.lax.cummax(jnp.where(new_group, t, 0), axis=1)
  starts = jnp.where(new_group, t, frames)
  starts_after = jnp.concatenate([starts[:, 1:], jnp.full_like(starts[:, :1], frames)], axis=1)
  group_end = jax.lax.cummin(starts_after, axis=1, reverse=True)
  previous_start = jnp.take_along_axis(group_start, jnp.maximum(group_start - 1, 0), axis=1)
  next_end = jnp.take_along_axis(group_end, jnp.minimum(group_end, frames - 1), axis=1)
  lo = jnp.where(
    group_start > 0, jnp.maximum(group_start - context_frames, previous_start), group_start
  )
  hi = jnp.where(group_end < frames, jnp.minimum(group_end + context_frames, next_end), group_end)
  return lo, hi


def shot_window_layout(
  shot_ids: jax.Array,
  *,
  grid_shape: tuple[int, int, int],
  spatial_groups: tuple[int, int],
  temporal_group: int | None,
  context_frames: int,
  tile: int,
  share: WorkShare | None = None,
) -> TileLayout:
  """The layout of STGA (and, with 1x1 windows and one-frame groups, per-frame attention).

  After the static (window, t, h, w) order, the keys of every query are one contiguous run of
  slots: its window's blocks of frames [lo, hi) from `temporal_key_frames`. The ranges depend
  on the shot ids (data, per batch element) and are computed on device; one row per batch
  element, shared by the heads. share: only the queries of `share.slots` (a contiguous run of
  the order's slots) see keys; the others get empty ranges, as padding does.
  """
  order = shot_window_order(tuple(grid_shape), tuple(spatial_groups), tile)
  lo_frame, hi_frame = temporal_key_frames(
    shot_ids, temporal_group=temporal_group, context_frames=context_frames
  )
  frame, base, size = (jnp.asarray(a) for a in order[2:])
  key_lo = base + lo_frame[:, frame] * size  # [B, L]; padding slots: size 0 -> empty
  key_hi = base + hi_frame[:, frame] * size
  n = math.prod(grid_shape)
  if share is not None:
    key_hi = jnp.where(share.owns_slot(jnp.arange(key_lo.shape[1]), n), key_hi, key_lo)
  return TileLayout(order.src, order.slot, range_mask(key_lo, key_hi, tile=tile, length=n))
