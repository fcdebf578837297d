"""Dense masked group attention: the oracle every other implementation is tested against.

It materialises the [B, H, N, N] score matrix, so it is for tests and short sequences only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_attention_reference(
    q: jax.Array, k: jax.Array, v: jax.Array, group_ids: jax.Array, *, scale: float
) -> jax.Array:
  """q, k, v: [B, N, H, D]; group_ids: [B, N, H] (or [B, N, 1], shared). Returns [B, N, H, D].

  out[b, i, h] = softmax_j over {j : ids[b, j, h] == ids[b, i, h]} of scale * q.k, applied to v,
  with float32 scores and softmax whatever the input dtype.
  """
  ids = jnp.moveaxis(group_ids, -1, 1)  # [B, H or 1, N]
  same_group = ids[..., :, None] == ids[..., None, :]  # [B, H or 1, N, N]
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(same_group, scores, -jnp.inf)  # every row keeps itself: never all -inf
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32))
  return out.astype(q.dtype)
