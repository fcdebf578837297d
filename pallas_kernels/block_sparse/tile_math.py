"""The arithmetic of one (query tile, key tile) pair, shared by every block-sparse kernel.

The Pallas kernels call these on the tiles they loaded; the xla path vmaps them over a chunk of
tiles. Keeping one copy means the kernels can only differ in what they load and when, never in
the math. Shapes: q, k, v, do [T, D]; the running max, row sum, lse and delta [T, 1] (2D, as
kernel scratch wants them). The state (m, row_sum, acc) is FlashAttention's (m, l, O).
Which keys a query sees in a pair is one boolean [Tq, Tk] array from `visible`: the key tile's
real length, and, for range masks, each query's [lo, hi) key range. Everything accumulates in
float32;
the P @ V and dS @ K products feed their left operand in the input dtype (as FlashAttention
does), so bf16 inputs use bf16 matmuls with f32 accumulation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def _real(length, axis: int, shape) -> jax.Array:
  """Positions along `axis` of a `shape` array that are below `length`."""
  return lax.broadcasted_iota(jnp.int32, shape, axis) < length


def visible(shape, key_len, *, q_len=None, key_offset=None, key_lo=None, key_hi=None):
  """bool [Tq, Tk]: the keys of one key tile that each query of one query tile sees.

  key_len: real keys at the start of the key tile. q_len: real queries at the start of the
  query tile (None: all). Range masks add key_lo, key_hi [Tq, 1] (each query's key range in
  sequence slots) and key_offset, the slot of the key tile's first key.
  """
  ok = _real(key_len, 1, shape)
  if q_len is not None:
    ok = ok & _real(q_len, 0, shape)
  if key_lo is not None:
    pos = key_offset + lax.broadcasted_iota(jnp.int32, shape, 1)
    ok = ok & (pos >= key_lo) & (pos < key_hi)
  return ok


def visible_in_pair(
  tile: int, key_len, key_tile, ranges=(), q_len=None, *, keys=None, key_shift: int | jax.Array = 0
):
  """`visible` for the tiles of one row, as the kernels call it: key_tile is the key tile's
  index in the row; ranges is () or the query tile's (key_lo, key_hi) [tile, 1]. A kernel that
  takes a key tile in sub-blocks passes keys (the sub-block's size) and key_shift (its first
  key's place in the tile); key_len then counts the sub-block's real keys."""
  shape = (tile, tile if keys is None else keys)
  if not ranges:
    return visible(shape, key_len, q_len=q_len)
  lo, hi = ranges
  return visible(
    shape, key_len, q_len=q_len, key_offset=key_tile * tile + key_shift, key_lo=lo, key_hi=hi
  )


def _nt(a, b):  # a @ b.T, f32 accumulation
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32)


def _nn(a, b):  # a @ b
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=F32)


def _tn(a, b):  # a.T @ b
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=F32)


def init_state(tile: int, head_dim: int):
  """Online-softmax state before any key tile: (m, l, acc)."""
  return (
    jnp.full((tile, 1), -jnp.inf, F32),
    jnp.zeros((tile, 1), F32),
    jnp.zeros((tile, head_dim), F32),
  )


def attend(state, q, k, v, seen, scale: float):
  """Folds one key tile into the online-softmax state; seen [Tq, Tk] from `visible`."""
  m, row_sum, acc = state
  s = _nt(q, k) * scale
  s = jnp.where(seen, s, -jnp.inf)
  m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
  # A row that has seen no key yet keeps m = -inf; exp(-inf - -inf) would be NaN. (Range masks
  # visit tiles in which some rows of the query tile see nothing.)
  m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
  alpha = jnp.exp(m - m_safe)
  p = jnp.exp(s - m_safe)
  row_sum = alpha * row_sum + p.sum(axis=1, keepdims=True)
  return m_new, row_sum, alpha * acc + _nn(p.astype(v.dtype), v)


def finish(state, dtype):
  """(out [T, D] in dtype, lse [T, 1]). Rows no key reached are NaN: a metadata bug must not
  pass as a zero output (only tiles that nobody reads should be left unvisited)."""
  m, row_sum, acc = state
  seen = row_sum > 0
  safe = jnp.where(seen, row_sum, 1.0)
  out = jnp.where(seen, acc / safe, jnp.nan).astype(dtype)
  return out, jnp.where(seen, m + jnp.log(safe), jnp.nan)


def softmax_delta(do, out) -> jax.Array:
  """delta = rowsum(dO * O) [..., 1] in float32, the backward pass's softmax correction."""
  return jnp.sum(do.astype(F32) * out.astype(F32), axis=-1, keepdims=True)


def _probs_and_ds(q, k, v, do, lse, delta, seen, scale):
  """P and dS of one pair, zero wherever a query does not see a key. The select on dS matters:
  a query row that sees nothing (padding) has NaN lse and delta, and 0 * NaN is NaN."""
  p = jnp.where(seen, jnp.exp(_nt(q, k) * scale - lse), 0.0)
  return p, jnp.where(seen, p * (_nt(do, v) - delta), 0.0)


def dq_step(dq, q, k, v, do, lse, delta, seen, scale: float):
  """Adds one key tile's contribution to dq [T, D] (float32); seen [Tq, Tk]."""
  _, ds = _probs_and_ds(q, k, v, do, lse, delta, seen, scale)
  return dq + scale * _nn(ds.astype(k.dtype), k)


def dkdv_step(carry, q, k, v, do, lse, delta, seen, scale: float):
  """Adds one query tile's contribution to (dk, dv) [T, D] (float32) of a key tile; seen
  [Tq, Tk] (queries of the visited tile x keys of this one)."""
  dk, dv = carry
  p, ds = _probs_and_ds(q, k, v, do, lse, delta, seen, scale)
  dv = dv + _tn(p.astype(do.dtype), do)
  return dk + scale * _tn(ds.astype(q.dtype), q), dv
