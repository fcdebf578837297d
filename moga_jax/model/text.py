"""A small byte-level text encoder: the trainable stand-in for umT5 in the tiny config.

Captions arrive as UTF-8 bytes [B, S, L] (0 = padding). Bytes are embedded, given learned
positions and passed through a few pre-norm transformer layers. The DiT only sees the output
[B, S, L, text_dim] and a padding mask, which is exactly the interface precomputed umT5
embeddings will use.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moga_jax.model.layers import FeedForward


class _Layer(nnx.Module):
  def __init__(self, dim: int, heads: int, param_dtype, rngs: nnx.Rngs):
    stored = dict(param_dtype=param_dtype, rngs=rngs)
    self.norm1 = nnx.LayerNorm(dim, dtype=jnp.float32, **stored)
    self.attn = nnx.MultiHeadAttention(heads, dim, decode=False, dtype=jnp.float32, **stored)
    self.norm2 = nnx.LayerNorm(dim, dtype=jnp.float32, **stored)
    self.ffn = FeedForward(dim, 4 * dim, dtype=jnp.float32, **stored)

  def __call__(self, x, mask):
    x = x + self.attn(self.norm1(x), mask=mask[..., None, None, :])
    return x + self.ffn(self.norm2(x))


class ByteTextEncoder(nnx.Module):
  """param_dtype: every parameter's storage dtype; the encoder computes in float32."""

  def __init__(
    self,
    dim: int,
    *,
    max_len: int,
    num_layers: int = 2,
    num_heads: int = 4,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    stored = dict(param_dtype=param_dtype, rngs=rngs)
    self.embed = nnx.Embed(256, dim, dtype=jnp.float32, **stored)
    pos = 0.02 * jax.random.normal(rngs.params(), (max_len, dim))
    self.pos = nnx.Param(pos.astype(param_dtype))
    self.layers = nnx.List([_Layer(dim, num_heads, param_dtype, rngs) for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(dim, dtype=jnp.float32, **stored)

  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """tokens: uint8/int [B, S, L] -> (embeddings [B, S, L, dim], mask bool [B, S, L])."""
    b, s, length = tokens.shape
    if length > self.pos.shape[0]:
      raise ValueError(
        f"captions hold {length} tokens but the encoder was built for at most {self.pos.shape[0]}"
      )
    mask = tokens > 0
    positions = self.pos[:length].astype(jnp.float32)
    x = self.embed(tokens.astype(jnp.int32).reshape(b * s, length)) + positions
    flat_mask = mask.reshape(b * s, length)
    # A caption with no token at all (dropped for classifier-free guidance) attends to itself
    # only through the first position, so the softmax stays defined; the DiT masks it anyway.
    attn_mask = flat_mask.at[:, 0].set(True)
    for layer in self.layers:
      x = layer(x, attn_mask)
    return self.norm(x).reshape(b, s, length, -1), mask
