"""Block-sparse attention over tile ranges in plain JAX: exact, any backend, cost ~ sum_g n_g^2.

Inputs are [rows, num_tiles * tile, D] (rows = batch x heads) with a `BlockMask` saying which
key tiles each query tile visits (see `pallas_kernels.metadata`); it visits those and nothing
else, with an online softmax in float32 (FlashAttention-2 style). Memory is
O(num_tiles * tile * D) plus one [chunk, tile, tile] score block: no N x N array exists.

How the work follows the group sizes. A `while_loop` whose trip count differs per tile cannot be
vectorised without running every tile for the longest count, so tiles are sorted by their range
length (descending) and processed `chunk` tiles at a time; each chunk loops only as long as its
longest member. A chunk therefore does about as many tile pairs as its members need, and the
total is sum_g ceil(n_g / tile)^2 plus at most one partly idle chunk per distinct group size.
Tiles past the last group (count 0) cost nothing.

Loops with dynamic bounds are not reverse-differentiable, so the gradient is a `custom_vjp`
with two more sweeps of the same shape: dq over each query tile's key range, and dk/dv over
each key tile's query tiles (the same lists: block masks are symmetric).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.block_sparse import tile_math
from pallas_kernels.block_sparse.flash_vjp import flash_attention_vjp, kernel_name
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.metadata import BlockMask, cdiv, visited_tile

_F32 = tile_math.F32

# Returned by a chunk builder: (initial carry, step(carry, cols, live) -> carry, finish(carry)).
ChunkProgram = tuple[Any, Callable[[Any, jax.Array, jax.Array], Any], Callable[[Any], Any]]


class _FlatMask(NamedTuple):
  """A BlockMask over all rows at once: tile u of row r is global tile r * num_tiles + u, and
  slot i of row r is global slot r * L + i."""

  start: jax.Array  # [R * nt]
  count: jax.Array
  tile_len: jax.Array
  indices: jax.Array | None  # [R * M] global tile indices, or None for contiguous runs
  key_lo: jax.Array | None  # [R * nt, T, 1] global key slots, or None without ranges
  key_hi: jax.Array | None
  key_start: jax.Array | None  # [R * nt] global tiles, the backward's runs (None: symmetric)
  key_count: jax.Array | None

  def seen(
    self, q_tiles: jax.Array, k_tiles: jax.Array, tile: int, *, real_queries: bool = False
  ) -> jax.Array:
    """bool [chunk, T, T]: which keys of tiles k_tiles the queries of tiles q_tiles see
    (real_queries: also drop the padding queries of each query tile)."""

    def one(q_tile, k_tile):  # global tile indices, so key_tile * tile is a global slot
      q_len = self.tile_len[q_tile] if real_queries else None
      ranges = () if self.key_lo is None else (self.key_lo[q_tile], self.key_hi[q_tile])
      return tile_math.visible_in_pair(tile, self.tile_len[k_tile], k_tile, ranges, q_len=q_len)

    return jax.vmap(one)(q_tiles, k_tiles)

  def transposed(self) -> _FlatMask:
    if self.key_start is None:
      return self
    return self._replace(start=self.key_start, count=self.key_count, indices=None)


def _flatten(mask: BlockMask) -> _FlatMask:
  rows, num_tiles = mask.start.shape
  row = jnp.arange(rows, dtype=jnp.int32)[:, None]
  flat = lambda a: a.reshape(-1)
  if mask.indices is None:
    start, indices = mask.start + row * num_tiles, None
  else:
    start = mask.start + row * mask.indices.shape[-1]
    indices = flat(mask.indices + row * num_tiles)
  lo = hi = key_start = key_count = None
  if mask.has_ranges:
    capacity = mask.key_lo.shape[-1]
    tiles = lambda a: (a + row * capacity).reshape(rows * num_tiles, -1, 1)
    lo, hi = tiles(mask.key_lo), tiles(mask.key_hi)
    key_start, key_count = flat(mask.key_start + row * num_tiles), flat(mask.key_count)
  return _FlatMask(
    flat(start), flat(mask.count), flat(mask.tile_len), indices, lo, hi, key_start, key_count
  )


def _sweep(mask: _FlatMask, chunk: int, program: Callable[[jax.Array], ChunkProgram]):
  """Runs `program` over every (row tile, column tile) pair, `chunk` row tiles at a time.

  program(rows [chunk]) builds the chunk's loop; its step receives the column tile each row
  visits at this step and a mask of the rows that still have one (rows without one get their
  own tile, a valid index, and must leave their carry unchanged). Returns finish's pytree with a
  leading axis over all row tiles, in tile order.
  """
  num_tiles = mask.start.shape[0]
  num_chunks = cdiv(num_tiles, chunk)
  total = num_chunks * chunk
  order = jnp.argsort(-mask.count, stable=True).astype(jnp.int32)
  order = jnp.pad(order, (0, total - num_tiles))  # filler rows: tile 0 again, with count 0
  count = jnp.where(jnp.arange(total) < num_tiles, mask.count[order], 0)
  start = mask.start[order]

  def run_chunk(args):
    rows, count, start = args
    carry, step, finish = program(rows)

    def body(state):
      j, carry = state
      live = j < count
      return j + 1, step(carry, jnp.where(live, visited_tile(start, j, mask.indices), rows), live)

    _, carry = lax.while_loop(lambda s: s[0] < jnp.max(count), body, (jnp.int32(0), carry))
    return finish(carry)

  split = lambda a: a.reshape(num_chunks, chunk)
  results = lax.map(run_chunk, (split(order), split(count), split(start)))
  inverse = (
    jnp.zeros(num_tiles, jnp.int32)
    .at[order[:num_tiles]]
    .set(jnp.arange(num_tiles, dtype=jnp.int32))
  )
  return jax.tree.map(lambda r: r.reshape(total, *r.shape[2:])[inverse], results)


def _where_live(live: jax.Array, new, old):
  def pick(n, o):
    return jnp.where(live.reshape(live.shape + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


def _chunk(options: KernelOptions, tiles: jax.Array) -> int:
  """Row tiles per chunk: options.xla_chunk_tokens // tile (tiles: [num tiles, tile, D])."""
  return max(1, options.xla_chunk_tokens // tiles.shape[1])


def _forward(q, k, v, mask: _FlatMask, scale: float, options: KernelOptions, pattern: str):
  chunk = _chunk(options, q)
  with jax.named_scope(kernel_name(pattern, "fwd")):
    return _forward_sweep(q, k, v, mask, scale, chunk)


def _forward_sweep(q, k, v, mask: _FlatMask, scale: float, chunk: int):
  tile, head_dim = q.shape[1], q.shape[2]
  attend = jax.vmap(functools.partial(tile_math.attend, scale=scale))
  finish = jax.vmap(functools.partial(tile_math.finish, dtype=q.dtype))

  def program(rows):
    q_rows = q[rows]

    def step(state, cols, live):
      seen = mask.seen(rows, cols, tile)
      return _where_live(live, attend(state, q_rows, k[cols], v[cols], seen), state)

    init = jax.tree.map(
      lambda a: jnp.broadcast_to(a, (rows.shape[0], *a.shape)), tile_math.init_state(tile, head_dim)
    )
    return init, step, finish

  return _sweep(mask, chunk, program)


def _backward_dq(q, k, v, do, lse, delta, mask: _FlatMask, scale: float, chunk: int):
  dq_step = jax.vmap(functools.partial(tile_math.dq_step, scale=scale))

  def program(rows):
    q_rows, do_rows, lse_rows, delta_rows = q[rows], do[rows], lse[rows], delta[rows]

    def step(dq, cols, live):
      new = dq_step(
        dq,
        q_rows,
        k[cols],
        v[cols],
        do_rows,
        lse_rows,
        delta_rows,
        mask.seen(rows, cols, q.shape[1]),
      )
      return _where_live(live, new, dq)

    return jnp.zeros(q_rows.shape, _F32), step, lambda dq: dq.astype(q.dtype)

  return _sweep(mask, chunk, program)


def _backward_dkdv(q, k, v, do, lse, delta, mask: _FlatMask, scale: float, chunk: int):
  dkdv_step = jax.vmap(functools.partial(tile_math.dkdv_step, scale=scale))

  def program(rows):
    k_rows, v_rows = k[rows], v[rows]

    def step(carry, cols, live):
      seen = mask.seen(cols, rows, q.shape[1], real_queries=True)
      new = dkdv_step(carry, q[cols], k_rows, v_rows, do[cols], lse[cols], delta[cols], seen)
      return _where_live(live, new, carry)

    init = (jnp.zeros(k_rows.shape, _F32), jnp.zeros(v_rows.shape, _F32))
    return init, step, lambda c: (c[0].astype(k.dtype), c[1].astype(v.dtype))

  return _sweep(mask, chunk, program)


def _backward(
  q, k, v, out, lse, do, mask: _FlatMask, scale: float, options: KernelOptions, pattern: str
):
  chunk = _chunk(options, q)
  delta = tile_math.softmax_delta(do, out)  # [nT, T, 1]
  with jax.named_scope(kernel_name(pattern, "dq")):
    dq = _backward_dq(q, k, v, do, lse, delta, mask, scale, chunk)
  with jax.named_scope(kernel_name(pattern, "dkdv")):
    dk, dv = _backward_dkdv(q, k, v, do, lse, delta, mask.transposed(), scale, chunk)
  return dq, dk, dv


_attention = flash_attention_vjp(_forward, _backward)


def block_sparse_attention_xla(
  q,
  k,
  v,
  mask: BlockMask,
  *,
  scale: float,
  options: KernelOptions | None = None,
  pattern: str = "block_sparse",
):
  """q, k, v: [rows, num_tiles * tile, D]; mask: per-row BlockMask. Returns q's shape and dtype.

  options: a `KernelOptions`; this path reads xla_chunk_tokens (query tokens advanced together).
  pattern: names the sweeps' scopes (moga_<pattern>_fwd / _dq / _dkdv) in HLO and profiles.
  """
  rows, length, head_dim = q.shape
  tile = length // mask.num_tiles
  as_tiles = lambda x: x.reshape(rows * mask.num_tiles, tile, head_dim)
  options = KernelOptions.of(options)
  out = _attention(as_tiles(q), as_tiles(k), as_tiles(v), _flatten(mask), scale, options, pattern)
  return out.reshape(q.shape)
