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

from pallas_kernels.metadata import BlockMask, cdiv

_F32 = jnp.float32

# Returned by a chunk builder: (initial carry, step(carry, cols, live) -> carry, finish(carry)).
ChunkProgram = tuple[Any, Callable[[Any, jax.Array, jax.Array], Any], Callable[[Any], Any]]


class _FlatMask(NamedTuple):
  """A BlockMask over all rows at once: tile u of row r is global tile r * num_tiles + u."""

  start: jax.Array  # [R * nt]
  count: jax.Array
  tile_len: jax.Array
  indices: jax.Array | None  # [R * M] global tile indices, or None for contiguous runs

  def col(self, start: jax.Array, j: jax.Array) -> jax.Array:
    if self.indices is None:
      return start + j
    return self.indices[jnp.clip(start + j, 0, self.indices.shape[0] - 1)]


def _flatten(mask: BlockMask) -> _FlatMask:
  rows, num_tiles = mask.start.shape
  row = jnp.arange(rows, dtype=jnp.int32)[:, None]
  if mask.indices is None:
    start, indices = mask.start + row * num_tiles, None
  else:
    start = mask.start + row * mask.indices.shape[-1]
    indices = (mask.indices + row * num_tiles).reshape(-1)
  return _FlatMask(start.reshape(-1), mask.count.reshape(-1), mask.tile_len.reshape(-1), indices)


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
      return j + 1, step(carry, jnp.where(live, mask.col(start, j), rows), live)

    _, carry = lax.while_loop(lambda s: s[0] < jnp.max(count), body, (jnp.int32(0), carry))
    return finish(carry)

  split = lambda a: a.reshape(num_chunks, chunk)
  results = lax.map(run_chunk, (split(order), split(count), split(start)))
  inverse = jnp.zeros(num_tiles, jnp.int32).at[order[:num_tiles]].set(
      jnp.arange(num_tiles, dtype=jnp.int32))
  return jax.tree.map(lambda r: r.reshape(total, *r.shape[2:])[inverse], results)


def _real(tile_len: jax.Array, tile: int) -> jax.Array:
  """Which positions of the given tiles hold real tokens: [C] -> [C, tile] bool."""
  return jnp.arange(tile, dtype=jnp.int32) < tile_len[:, None]


def _where_live(live: jax.Array, new, old):
  def pick(n, o):
    return jnp.where(live.reshape(live.shape + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


def _forward(q, k, v, mask: _FlatMask, scale: float, chunk: int):
  tile, head_dim = q.shape[1], q.shape[2]

  def program(rows):
    q_rows = q[rows]

    def step(carry, cols, live):
      m, row_sum, acc = carry
      s = jnp.einsum("ctd,csd->cts", q_rows, k[cols], preferred_element_type=_F32) * scale
      s = jnp.where(_real(mask.tile_len[cols], tile)[:, None, :], s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(axis=-1))
      alpha = jnp.exp(m - m_new)
      p = jnp.exp(s - m_new[..., None])
      sum_new = alpha * row_sum + p.sum(axis=-1)
      pv = jnp.einsum("cts,csd->ctd", p.astype(v.dtype), v[cols], preferred_element_type=_F32)
      return _where_live(live, (m_new, sum_new, alpha[..., None] * acc + pv), carry)

    def finish(carry):
      m, row_sum, acc = carry
      # A row that no key tile reached is NaN, not zero: only tiles past the last group should
      # be unreached (nobody reads them), and a metadata bug must not pass as a zero output.
      seen = row_sum > 0
      safe_sum = jnp.where(seen, row_sum, 1.0)
      out = jnp.where(seen[..., None], acc / safe_sum[..., None], jnp.nan)
      return out.astype(q.dtype), jnp.where(seen, m + jnp.log(safe_sum), jnp.nan)

    c = rows.shape[0]
    init = (jnp.full((c, tile), -jnp.inf, _F32), jnp.zeros((c, tile), _F32),
            jnp.zeros((c, tile, head_dim), _F32))
    return init, step, finish

  return _sweep(mask, chunk, program)


def _backward_dq(q, k, v, do, lse, delta, mask: _FlatMask, scale: float, chunk: int):
  tile = q.shape[1]

  def program(rows):
    q_rows, do_rows = q[rows], do[rows]
    lse_rows, delta_rows = lse[rows][..., None], delta[rows][..., None]

    def step(dq, cols, live):
      s = jnp.einsum("ctd,csd->cts", q_rows, k[cols], preferred_element_type=_F32) * scale
      p = jnp.where(_real(mask.tile_len[cols], tile)[:, None, :], jnp.exp(s - lse_rows), 0.0)
      dp = jnp.einsum("ctd,csd->cts", do_rows, v[cols], preferred_element_type=_F32)
      ds = p * (dp - delta_rows)
      dq_new = dq + scale * jnp.einsum("cts,csd->ctd", ds.astype(k.dtype), k[cols],
                                       preferred_element_type=_F32)
      return _where_live(live, dq_new, dq)

    return jnp.zeros(q_rows.shape, _F32), step, lambda dq: dq.astype(q.dtype)

  return _sweep(mask, chunk, program)


def _backward_dkdv(q, k, v, do, lse, delta, mask: _FlatMask, scale: float, chunk: int):
  tile = q.shape[1]

  def program(rows):
    k_rows, v_rows = k[rows], v[rows]
    key_ok = _real(mask.tile_len[rows], tile)  # [C, Tk]

    def step(carry, cols, live):
      dk, dv = carry
      q_cols, do_cols = q[cols], do[cols]
      ok = _real(mask.tile_len[cols], tile)[:, :, None] & key_ok[:, None, :]  # [C, Tq, Tk]
      s = jnp.einsum("ctd,csd->cts", q_cols, k_rows, preferred_element_type=_F32) * scale
      p = jnp.where(ok, jnp.exp(s - lse[cols][..., None]), 0.0)
      dv_new = dv + jnp.einsum("cts,ctd->csd", p.astype(do.dtype), do_cols,
                               preferred_element_type=_F32)
      dp = jnp.einsum("ctd,csd->cts", do_cols, v_rows, preferred_element_type=_F32)
      ds = p * (dp - delta[cols][..., None])
      dk_new = dk + scale * jnp.einsum("cts,ctd->csd", ds.astype(q.dtype), q_cols,
                                       preferred_element_type=_F32)
      return _where_live(live, (dk_new, dv_new), carry)

    init = (jnp.zeros(k_rows.shape, _F32), jnp.zeros(v_rows.shape, _F32))
    return init, step, lambda c: (c[0].astype(k.dtype), c[1].astype(v.dtype))

  return _sweep(mask, chunk, program)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, mask: _FlatMask, scale: float, chunk: int):
  out, _ = _forward(q, k, v, mask, scale, chunk)
  return out


def _vjp_fwd(q, k, v, mask, scale, chunk):
  out, lse = _forward(q, k, v, mask, scale, chunk)
  return out, (q, k, v, mask, out, lse)


def _vjp_bwd(scale, chunk, residuals, do):
  q, k, v, mask, out, lse = residuals
  delta = jnp.einsum("ntd,ntd->nt", do.astype(_F32), out.astype(_F32))
  dq = _backward_dq(q, k, v, do, lse, delta, mask, scale, chunk)
  dk, dv = _backward_dkdv(q, k, v, do, lse, delta, mask, scale, chunk)
  return dq, dk, dv, None


_attention.defvjp(_vjp_fwd, _vjp_bwd)


def block_sparse_attention_xla(q, k, v, mask: BlockMask, *, scale: float,
                               chunk_tokens: int = 2048):
  """q, k, v: [rows, num_tiles * tile, D]; mask: per-row BlockMask. Returns q's shape and dtype.

  chunk_tokens: query tokens advanced together (chunk_tokens // tile tiles). Bigger chunks mean
  fewer loop steps and bigger matmuls, but more idle lanes where range lengths differ.
  """
  rows, length, head_dim = q.shape
  tile = length // mask.num_tiles
  chunk = max(1, chunk_tokens // tile)
  as_tiles = lambda x: x.reshape(rows * mask.num_tiles, tile, head_dim)
  out = _attention(as_tiles(q), as_tiles(k), as_tiles(v), _flatten(mask), scale, chunk)
  return out.reshape(q.shape)
