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


def shot_window_visible(
  shot_ids, *, grid_shape, spatial_groups, temporal_group, context_frames
) -> jax.Array:
  """bool [B, 1, N, N], read off the definition of STGA (deliberately not the layout's maths).

  Frames get temporal group ids by counting group starts (a new shot, or every
  `temporal_group` frames into a shot); a query frame sees the key frames of its own group,
  the frames of the previous group with fewer than `context_frames` frames of that group after
  them, and the frames of the next group with fewer than `context_frames` before them; and
  only keys in its own spatial window.
  """
  frames, height, width = grid_shape
  t = jnp.arange(frames)
  change = jnp.concatenate(
    [jnp.ones_like(shot_ids[:, :1], bool), shot_ids[:, 1:] != shot_ids[:, :-1]], axis=1
  )
  run = jnp.cumsum(change, axis=1)
  earlier = t[None, None, :] < t[None, :, None]  # [1, T, T]: [t, t'] = t' < t
  same_run = run[:, :, None] == run[:, None, :]
  new_group = change
  if temporal_group is not None:
    position_in_run = jnp.sum(same_run & earlier, axis=2)
    new_group = change | (position_in_run % temporal_group == 0)
  group = jnp.cumsum(new_group, axis=1)
  same = group[:, :, None] == group[:, None, :]
  before = jnp.sum(same & earlier, axis=2)  # frames of a frame's group before it
  after = jnp.sum(same & jnp.swapaxes(earlier, 1, 2), axis=2)
  gq, gk = group[:, :, None], group[:, None, :]
  frames_ok = (
    same
    | ((gk == gq - 1) & (after[:, None, :] < context_frames))
    | ((gk == gq + 1) & (before[:, None, :] < context_frames))
  )
  window = np.tile(spatial_window_ids_reference(height, width, spatial_groups).reshape(-1), frames)
  token_frame = np.repeat(np.arange(frames), height * width)
  visible = frames_ok[:, token_frame][:, :, token_frame] & (window[:, None] == window[None])
  return visible[:, None]


def spatial_window_ids_reference(height: int, width: int, spatial_groups) -> np.ndarray:
  """Window of every (h, w): window (i, j) holds rows [i*H/sh, (i+1)*H/sh) and columns
  [j*W/sw, (j+1)*W/sw) (fractional bounds), numbered row-major."""
  sh, sw = spatial_groups
  rows = np.floor(np.arange(height) / (height / sh)).astype(int)
  cols = np.floor(np.arange(width) / (width / sw)).astype(int)
  return rows[:, None] * sw + cols[None, :]


def shot_window_attention_reference(
  q, k, v, shot_ids, *, grid_shape, spatial_groups, temporal_group, context_frames, scale: float
) -> jax.Array:
  visible = shot_window_visible(
    shot_ids,
    grid_shape=grid_shape,
    spatial_groups=spatial_groups,
    temporal_group=temporal_group,
    context_frames=context_frames,
  )
  return masked_attention_reference(q, k, v, visible, scale=scale)
