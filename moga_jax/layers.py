"""Building blocks of the Wan-style DiT: time embedding, FFN, per-shot cross-attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """t: [B] (diffusion time scaled to [0, 1000]) -> [B, dim] float32, (cos, sin) halves."""
  half = dim // 2
  freqs = jnp.asarray(np.exp(-np.log(max_period) * np.arange(half) / half), jnp.float32)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class FeedForward(nnx.Module):
  """Linear -> GELU (tanh) -> Linear, as in Wan's blocks."""

  def __init__(self, dim: int, hidden: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


class ShotCrossAttention(nnx.Module):
  """Video tokens attend to text tokens; in multi-shot mode only to their own shot's caption.

  context: [B, S, L, D] (S shots of L text tokens, already projected to the model width),
  context_mask: bool [B, S, L] (False for padding), token_shot: int32 [B, N] (each video
  token's shot). Computed one shot at a time, so memory is O(N * L), not O(N * S * L).
  A token whose shot has no real caption token gets zero from this branch.
  """

  def __init__(self, dim: int, num_heads: int, *, dtype=None, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim})")
    self.num_heads = num_heads
    linear = lambda: nnx.Linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q, self.k, self.v, self.o = linear(), linear(), linear(), linear()
    norm = lambda: nnx.RMSNorm(dim, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
    self.norm_q, self.norm_k = norm(), norm()

  def __call__(self, x, context, context_mask, token_shot):
    batch, seq, dim = x.shape
    heads = lambda t: t.reshape(*t.shape[:-1], self.num_heads, dim // self.num_heads)
    q = heads(self.norm_q(self.q(x)))
    k, v = heads(self.norm_k(self.k(context))), heads(self.v(context))  # [B, S, L, H, Dh]
    out = jnp.zeros_like(q)
    for s in range(context.shape[1]):
      mask = context_mask[:, s][:, None, None, :]  # [B, 1, 1, L]
      attended = jax.nn.dot_product_attention(q, k[:, s], v[:, s], mask=mask)
      has_text = jnp.any(context_mask[:, s], axis=-1)[:, None]  # [B, 1]
      mine = (token_shot == s) & has_text  # [B, N]
      out = jnp.where(mine[..., None, None], attended, out)
    return self.o(out.reshape(batch, seq, dim))
