"""Building blocks of the Wan-style DiT: time embedding, FFN, per-shot cross-attention."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moga_jax.model.config import head_dim_of
from moga_jax.parallel.sequence_parallel import local_tokens, map_token_chunks
from moga_jax.parallel.sharding import ShardingRules
from pallas_kernels.common import cdiv, check_int


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """t: [B] (diffusion time scaled to [0, 1000]) -> [B, dim] float32, (cos, sin) halves."""
  half = dim // 2
  freqs = jnp.asarray(np.exp(-np.log(max_period) * np.arange(half) / half), jnp.float32)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class FeedForward(nnx.Module):
  """Linear -> GELU (tanh) -> Linear, as in Wan's blocks.

  token_chunk: apply it to chunks of at most this many of each device's tokens, one after
  another, each a checkpoint of its own, so the backward pass holds one chunk's [chunk, hidden]
  intermediates instead of the whole sequence's (at 70K tokens per chip and hidden 13,824 the
  GELU's inputs alone are 3.6 GiB in float32). None: all tokens at once. Same result either way.
  """

  def __init__(
    self,
    dim: int,
    hidden: int,
    *,
    token_chunk: int | None = None,
    dtype=None,
    param_dtype=jnp.float32,
    rules: ShardingRules | None = None,
    rngs: nnx.Rngs,
  ):
    if token_chunk is not None:
      check_int("token_chunk", token_chunk)
    self.token_chunk, self.rules = token_chunk, rules
    self.fc1 = nnx.Linear(dim, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    ffn = lambda x: self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))
    if self.token_chunk is None:
      return ffn(x)
    return map_token_chunks(ffn, x, self.token_chunk, self.rules)


class ShotCrossAttention(nnx.Module):
  """Video tokens attend to text tokens; in multi-shot mode only to their own shot's caption.

  context: [B, S, L, D] (S shots of L text tokens, already projected to the model width),
  context_mask: bool [B, S, L] (False for padding), token_shot: int32 [B, N] (each video
  token's shot). A token whose shot has no real caption token gets zero from this branch.

  The S captions are one key sequence of S * L tokens, masked to the token's own shot. Queries
  go through in chunks of `query_chunk` tokens, each rematerialised in the backward pass, so
  the score memory is O(query_chunk * S * L) whatever the video length (at 580K tokens a
  per-shot loop over all tokens kept ~200 GiB of scores per device for the backward pass).
  With sharding rules and a mesh, each device attends for its own tokens (see
  `sequence_parallel.local_tokens`).
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    query_chunk: int = 1024,
    dtype=None,
    param_dtype=jnp.float32,
    rules: ShardingRules | None = None,
    rngs: nnx.Rngs,
  ):
    head_dim_of(dim, num_heads)
    self.num_heads, self.query_chunk, self.rules = num_heads, query_chunk, rules
    linear = lambda: nnx.Linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q, self.k, self.v, self.o = linear(), linear(), linear(), linear()
    norm = lambda: nnx.RMSNorm(dim, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm_q, self.norm_k = norm(), norm()

  def __call__(self, x, context, context_mask, token_shot):
    batch, seq, dim = x.shape
    heads = lambda t: t.reshape(*t.shape[:-1], self.num_heads, dim // self.num_heads)
    q = heads(self.norm_q(self.q(x)))
    k, v = heads(self.norm_k(self.k(context))), heads(self.v(context))  # [B, S, L, H, Dh]
    attend = functools.partial(shot_attention, query_chunk=self.query_chunk)
    out = local_tokens(attend, self.rules, q, token_shot, k, v, context_mask)
    return self.o(out.reshape(batch, seq, dim))


def shot_attention(q, token_shot, k, v, context_mask, *, query_chunk: int):
  """q [B, n, H, D] attends to k, v [B, S, L, H, D] where the key's shot is the query's
  (token_shot [B, n]) and context_mask [B, S, L] is True. Rows with no such key give 0."""
  batch, n, heads, head_dim = q.shape
  shots, length = k.shape[1:3]
  keys, values = (t.reshape(batch, shots * length, heads, head_dim) for t in (k, v))
  key_shot = jnp.repeat(jnp.arange(shots, dtype=jnp.int32), length)  # [S * L]
  key_ok = context_mask.reshape(batch, shots * length)

  def chunk(q, shot):  # [B, c, H, D], [B, c]
    allowed = (shot[:, :, None] == key_shot) & key_ok[:, None, :]  # [B, c, S * L]
    out = jax.nn.dot_product_attention(q, keys, values, mask=allowed[:, None])
    return jnp.where(allowed.any(-1)[..., None, None], out, 0).astype(q.dtype)

  if n <= query_chunk:
    return chunk(q, token_shot)
  chunks = cdiv(n, query_chunk)
  pad = chunks * query_chunk - n
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  token_shot = jnp.pad(token_shot, ((0, 0), (0, pad)), constant_values=-1)
  split = lambda t: jnp.moveaxis(t.reshape(batch, chunks, query_chunk, *t.shape[2:]), 1, 0)
  out = jax.lax.map(lambda a: jax.checkpoint(chunk)(*a), (split(q), split(token_shot)))
  return jnp.moveaxis(out, 0, 1).reshape(batch, chunks * query_chunk, heads, head_dim)[:, :n]
