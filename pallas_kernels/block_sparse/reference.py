"""Dense masked attention: the oracles every other implementation is tested against.

They materialise [B, H, N, N] scores, so they are for tests and short sequences only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def masked_attention_reference(q, k, v, allowed, *, scale: float) -> jax.Array:
  """q, k, v: [B, N, H, D]; allowed: bool, broadcastable to [B, H, N, N], True on the diagonal.

  Float32 scores and softmax whatever the input dtype; returns [B, N, H, D] in q.dtype.
  """
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(allowed, scores, -jnp.inf)  # every row keeps itself: never all -inf
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32))
  return out.astype(q.dtype)


def group_attention_reference(q, k, v, group_ids, *, scale: float) -> jax.Array:
  """group_ids: [B, N, H] or [B, N, 1]: a token sees exactly the tokens of its own group."""
  ids = jnp.moveaxis(group_ids, -1, 1)  # [B, H or 1, N]
  return masked_attention_reference(q, k, v, ids[..., :, None] == ids[..., None, :], scale=scale)


def window_attention_reference(q, k, v, *, grid_shape, tile, window, scale: float) -> jax.Array:
  """Raster (t, h, w) tokens; a token sees the tokens whose tile coordinates differ by at most
  window[a] // 2 on every axis a."""
  coords = np.stack(np.meshgrid(*(np.arange(g) for g in grid_shape), indexing="ij"), -1)
  tiles = coords.reshape(-1, 3) // np.asarray(tile)
  near = np.all(np.abs(tiles[:, None] - tiles[None]) <= np.asarray(window) // 2, axis=-1)
  return masked_attention_reference(q, k, v, jnp.asarray(near), scale=scale)
