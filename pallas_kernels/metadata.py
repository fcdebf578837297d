"""Group layout: where every token goes once the sequence is sorted by group.

MoGA attention is block-sparse only after a permutation. Tokens are stably sorted by group id
and every group is padded up to a whole number of tiles, so each tile holds tokens of exactly
one group and "attend within my group" becomes "visit the contiguous run of tiles that my group
owns". This module computes that permutation and the per-tile metadata on device, with static
shapes, and provides the two gathers that move activations in and out of the sorted layout.

Every implementation of `group_attention` and the MoGA module share these helpers; nothing else
in the code base re-implements the permutation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def cdiv_array(a: jax.Array, b: int) -> jax.Array:
  return (a + (b - 1)) // b


def sorted_capacity(seq_len: int, num_groups: int, tile: int) -> int:
  """Static length of the sorted buffer: every group padded to the tile, in the worst case.

  At most min(num_groups, seq_len) groups are non-empty and each wastes at most tile - 1 slots.
  """
  return cdiv(seq_len + min(num_groups, seq_len) * (tile - 1), tile) * tile


class BlockMask(NamedTuple):
  """Which key tiles each query tile visits: the metadata every block-sparse kernel reads.

  Activations are [rows, num_tiles * tile, D], rows being (batch x heads) sequences. For row r
  and query tile t, the tile visits count[r, t] key tiles:
    indices is None (a contiguous run, as in the group branch): start[r, t] + j, j < count;
    otherwise (CSR lists, as in the window branch): indices[r, start[r, t] + j], j < count.
  tile_len[r, t] is the number of real tokens at the start of tile t; the rest of the tile is
  padding, masked as keys and ignored as queries. Tiles with count 0 are never computed.

  The pattern must be symmetric (t visits u exactly when u visits t): the backward pass walks
  the same lists from the key side to find the query tiles that read a key tile.
  """

  start: jax.Array
  count: jax.Array
  tile_len: jax.Array
  indices: jax.Array | None = None

  @property
  def num_tiles(self) -> int:
    return self.start.shape[-1]


def broadcast_rows(mask: BlockMask, *, batch: int, heads: int) -> BlockMask:
  """[batch * h, ...] metadata with h in {1, heads} -> [batch * heads, ...]."""

  def per_head(a):
    if a is None:
      return None
    a = a.reshape(batch, -1, a.shape[-1])
    return jnp.broadcast_to(a, (batch, heads, a.shape[-1])).reshape(batch * heads, -1)

  return BlockMask(*(per_head(a) for a in mask))


class GroupLayout(NamedTuple):
  """Sorted, tile-padded layout of one or more routed sequences (a pytree of int32 arrays).

  Rows are independent sequences (batch x routed heads). With R rows of N tokens, capacity L
  (`sorted_capacity`) and L // tile tiles per row:

  src:  [R, L] token index that fills each slot, N for a padding slot.
  slot: [R, N] slot that each token moves to (the inverse of `src`).
  mask: the block mask: a tile of group g visits the contiguous run of tiles g owns; tiles past
        the last group have count 0. Query and key tiles of a group coincide, so it is symmetric.
  """

  src: jax.Array
  slot: jax.Array
  mask: BlockMask

  @property
  def tile(self) -> int:
    return self.src.shape[-1] // self.mask.num_tiles

  @property
  def capacity(self) -> int:
    return self.src.shape[-1]


def group_layout(group_ids: jax.Array, *, num_groups: int, tile: int) -> GroupLayout:
  """Builds the sorted, tile-padded layout of `group_ids` [R, N] (int, values in [0, G)).

  The sort is stable, so tokens keep their sequence order inside a group. Ids outside
  [0, num_groups) must have been rejected (or clipped) by the caller.
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
  take = lambda a: jnp.take_along_axis(a, owner, axis=-1)
  group_end = take(padded_start) + take(counts)
  mask = BlockMask(
      start=jnp.where(in_use, take(padded_start) // tile, 0).astype(jnp.int32),
      count=jnp.where(in_use, take(padded) // tile, 0).astype(jnp.int32),
      tile_len=jnp.where(in_use, jnp.clip(group_end - tile_first_slot, 0, tile), 0)
      .astype(jnp.int32),
  )
  return GroupLayout(src, slot, mask)


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
  return jnp.cumsum(x, axis=-1) - x


# --- Moving activations in and out of the sorted layout ------------------------------------
#
# x is [B, H, N, D] and the layout has R = B * Hr rows with Hr in {1, H}: with Hr = 1 (routing
# shared by the heads) one permutation serves every head. Packing is a gather by `src` (padding
# slots read zeros) and unpacking a gather by `slot`; each is the other's transpose, so both
# gradients are gathers as well, never scatters.


def _row_indices(indices: jax.Array, batch: int) -> jax.Array:
  """[B*Hr, M] -> [B, Hr, M, 1], broadcastable against [B, H, *, D]."""
  return indices.reshape(batch, -1, indices.shape[-1])[..., None]


def _pack(x: jax.Array, layout: GroupLayout) -> jax.Array:
  idx = _row_indices(layout.src, x.shape[0])
  return jnp.take_along_axis(x, idx, axis=2, mode="fill", fill_value=0)


def _unpack(y: jax.Array, layout: GroupLayout) -> jax.Array:
  idx = _row_indices(layout.slot, y.shape[0])
  return jnp.take_along_axis(y, idx, axis=2, mode="promise_in_bounds")


def _with_transpose(gather, transpose, doc: str):
  """`gather` with `transpose` as its VJP: the default VJP of a gather would be a scatter."""

  @jax.custom_vjp
  def op(x: jax.Array, layout: GroupLayout) -> jax.Array:
    return gather(x, layout)

  op.defvjp(lambda x, layout: (gather(x, layout), layout),
            lambda layout, g: (transpose(g, layout), None))
  op.__doc__ = doc
  return op


pack_by_group = _with_transpose(
    _pack, _unpack, "[B, H, N, D] in sequence order -> [B, H, L, D] sorted and padded.")
unpack_by_group = _with_transpose(
    _unpack, _pack, "[B, H, L, D] sorted and padded -> [B, H, N, D] in sequence order.")
