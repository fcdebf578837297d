"""The arithmetic of one (query tile, key tile) pair, shared by every block-sparse kernel.

The Pallas kernels call these on the tiles they loaded; the xla path vmaps them over a chunk of
tiles. Keeping one copy means the kernels can only differ in what they load and when, never in
the math. Shapes: q, k, v, do [T, D]; the running max, row sum, lse and delta [T, 1] (2D, as
kernel scratch wants them). The state (m, row_sum, acc) is FlashAttention's (m, l, O).
Lengths say how many leading rows of a tile are real tokens. Everything accumulates in float32;
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


def _nt(a, b):  # a @ b.T, f32 accumulation
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32)


def _nn(a, b):  # a @ b
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=F32)


def _tn(a, b):  # a.T @ b
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=F32)


def init_state(tile: int, head_dim: int):
  """Online-softmax state before any key tile: (m, l, acc)."""
  return (jnp.full((tile, 1), -jnp.inf, F32), jnp.zeros((tile, 1), F32),
          jnp.zeros((tile, head_dim), F32))


def attend(state, q, k, v, key_len, scale: float):
  """Folds one key tile (its first key_len keys) into the online-softmax state."""
  m, row_sum, acc = state
  s = _nt(q, k) * scale
  s = jnp.where(_real(key_len, 1, s.shape), s, -jnp.inf)
  m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
  alpha = jnp.exp(m - m_new)
  p = jnp.exp(s - m_new)
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


def _probs(q, k, lse, q_len, key_len, scale):
  s = _nt(q, k) * scale
  real = _real(key_len, 1, s.shape) & _real(q_len, 0, s.shape)
  return jnp.where(real, jnp.exp(s - lse), 0.0)


def dq_step(dq, q, k, v, do, lse, delta, key_len, scale: float):
  """Adds one key tile's contribution to dq [T, D] (float32)."""
  p = _probs(q, k, lse, q.shape[0], key_len, scale)
  ds = p * (_nt(do, v) - delta)
  return dq + scale * _nn(ds.astype(k.dtype), k)


def dkdv_step(carry, q, k, v, do, lse, delta, q_len, key_len, scale: float):
  """Adds one query tile's contribution to (dk, dv) [T, D] (float32) of a key tile."""
  dk, dv = carry
  p = _probs(q, k, lse, q_len, key_len, scale)  # [Tq, Tk]
  dv = dv + _tn(p.astype(do.dtype), do)
  ds = p * (_nt(do, v) - delta)
  return dk + scale * _tn(ds.astype(q.dtype), q), dv
