"""Block-sparse attention over tile ranges in plain JAX: exact, any backend, cost ~ sum_g n_g^2.

Input activations are already in the sorted layout (see `pallas_kernels.metadata`) and cut
into tiles: [num_tiles, tile, D]. Query tile u visits key tiles [start[u], start[u] + count[u])
and nothing else, with an online softmax in float32 (FlashAttention-2 style). Memory is
O(num_tiles * tile * D) plus one [chunk, tile, tile] score block: no N x N array exists.

How the work follows the group sizes. A `while_loop` whose trip count differs per tile cannot be
vectorised without running every tile for the longest count, so tiles are sorted by their range
length (descending) and processed `chunk` tiles at a time; each chunk loops only as long as its
longest member. A chunk therefore does about as many tile pairs as its members need, and the
total is sum_g ceil(n_g / tile)^2 plus at most one partly idle chunk per distinct group size.
Tiles past the last group (count 0) cost nothing.

Loops with dynamic bounds are not reverse-differentiable, so the gradient is a `custom_vjp`
with two more sweeps of the same shape: dq over each query tile's key range, and dk/dv over
each key tile's query range (the same range: a group's query and key tiles coincide).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.metadata import TileRanges, cdiv

_F32 = jnp.float32

# Returned by a chunk builder: (initial carry, step(carry, cols, live) -> carry, finish(carry)).
ChunkProgram = tuple[Any, Callable[[Any, jax.Array, jax.Array], Any], Callable[[Any], Any]]


def _sweep(ranges: TileRanges, chunk: int, program: Callable[[jax.Array], ChunkProgram]):
  """Runs `program` over every (row tile, column tile) pair, `chunk` row tiles at a time.

  program(rows [chunk]) builds the chunk's loop; its step receives the column tile each row
  visits at this step and a mask of the rows that still have one. Returns finish's pytree with a
  leading axis over all row tiles, in tile order.
  """
  num_tiles = ranges.start.shape[0]
  num_chunks = cdiv(num_tiles, chunk)
  total = num_chunks * chunk
  order = jnp.argsort(-ranges.count, stable=True).astype(jnp.int32)
  order = jnp.pad(order, (0, total - num_tiles))  # filler rows: tile 0 again, with count 0
  count = jnp.where(jnp.arange(total) < num_tiles, ranges.count[order], 0)
  start = ranges.start[order]

  def run_chunk(args):
    rows, count, start = args
    carry, step, finish = program(rows)

    def body(state):
      j, carry = state
      live = j < count
      cols = jnp.where(live, start + j, start)
      return j + 1, step(carry, cols, live)

    _, carry = lax.while_loop(lambda s: s[0] < jnp.max(count), body, (jnp.int32(0), carry))
    return finish(carry)

  split = lambda a: a.reshape(num_chunks, chunk)
  results = lax.map(run_chunk, (split(order), split(count), split(start)))
  inverse = jnp.zeros(num_tiles, jnp.int32).at[order[:num_tiles]].set(
      jnp.arange(num_tiles, dtype=jnp.int32))
  return jax.tree.map(lambda r: r.reshape(total, *r.shape[2:])[inverse], results)


def _slots(tiles: jax.Array, tile: int) -> jax.Array:
  """Global slot index of every position of the given tiles: [C] -> [C, tile]."""
  return tiles[:, None] * tile + jnp.arange(tile, dtype=jnp.int32)


def _where_live(live: jax.Array, new, old):
  def pick(n, o):
    return jnp.where(live.reshape(live.shape + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


def _forward(q, k, v, ranges: TileRanges, scale: float, chunk: int):
  tile, head_dim = q.shape[1], q.shape[2]

  def program(rows):
    q_rows = q[rows]
    valid_end = ranges.valid_end[rows][:, None, None]

    def step(carry, cols, live):
      m, row_sum, acc = carry
      s = jnp.einsum("ctd,csd->cts", q_rows, k[cols], preferred_element_type=_F32) * scale
      s = jnp.where(_slots(cols, tile)[:, None, :] < valid_end, s, -jnp.inf)
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

  return _sweep(ranges, chunk, program)


def _backward_dq(q, k, v, do, lse, delta, ranges: TileRanges, scale: float, chunk: int):
  tile = q.shape[1]

  def program(rows):
    q_rows, do_rows = q[rows], do[rows]
    lse_rows, delta_rows = lse[rows][..., None], delta[rows][..., None]
    valid_end = ranges.valid_end[rows][:, None, None]

    def step(dq, cols, live):
      s = jnp.einsum("ctd,csd->cts", q_rows, k[cols], preferred_element_type=_F32) * scale
      p = jnp.where(_slots(cols, tile)[:, None, :] < valid_end, jnp.exp(s - lse_rows), 0.0)
      dp = jnp.einsum("ctd,csd->cts", do_rows, v[cols], preferred_element_type=_F32)
      ds = p * (dp - delta_rows)
      dq_new = dq + scale * jnp.einsum("cts,csd->ctd", ds.astype(k.dtype), k[cols],
                                       preferred_element_type=_F32)
      return _where_live(live, dq_new, dq)

    return jnp.zeros(q_rows.shape, _F32), step, lambda dq: dq.astype(q.dtype)

  return _sweep(ranges, chunk, program)


def _backward_dkdv(q, k, v, do, lse, delta, ranges: TileRanges, scale: float, chunk: int):
  tile = q.shape[1]

  def program(rows):
    k_rows, v_rows = k[rows], v[rows]
    valid_end = ranges.valid_end[rows][:, None]
    key_ok = _slots(rows, tile) < valid_end  # [C, Tk]

    def step(carry, cols, live):
      dk, dv = carry
      q_cols, do_cols = q[cols], do[cols]
      ok = (_slots(cols, tile) < valid_end)[:, :, None] & key_ok[:, None, :]  # [C, Tq, Tk]
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

  return _sweep(ranges, chunk, program)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def block_sparse_attention_xla(q, k, v, ranges: TileRanges, scale: float, chunk: int):
  """q, k, v: [num_tiles, tile, D] in the sorted layout; returns the output in the same layout.

  `ranges` holds per-tile key ranges with global indices (`metadata.global_tile_ranges`).
  """
  out, _ = _forward(q, k, v, ranges, scale, chunk)
  return out


def _vjp_fwd(q, k, v, ranges, scale, chunk):
  out, lse = _forward(q, k, v, ranges, scale, chunk)
  return out, (q, k, v, ranges, out, lse)


def _vjp_bwd(scale, chunk, residuals, do):
  q, k, v, ranges, out, lse = residuals
  delta = jnp.einsum("ntd,ntd->nt", do.astype(_F32), out.astype(_F32))
  dq = _backward_dq(q, k, v, do, lse, delta, ranges, scale, chunk)
  dk, dv = _backward_dkdv(q, k, v, do, lse, delta, ranges, scale, chunk)
  return dq, dk, dv, None


block_sparse_attention_xla.defvjp(_vjp_fwd, _vjp_bwd)
