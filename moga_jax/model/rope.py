"""3D rotary position embedding over a (t, h, w) token grid, Wan 2.1's split of head_dim.

The head dimension is cut into three even parts, one per axis: h and w get 2 * (d // 6) each
and t gets the rest, and each part rotates by its own axis position. Frequencies follow the
usual theta^(-2i/n) ladder within each part.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def axis_dims(head_dim: int) -> tuple[int, int, int]:
  if head_dim % 2 or head_dim < 6:
    raise ValueError(f"3D RoPE needs an even head_dim >= 6, got {head_dim}")
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def rope_angles(
  grid_shape: tuple[int, int, int], head_dim: int, theta: float = 10000.0
) -> np.ndarray:
  """Rotation angles [T * H * W, head_dim // 2] for raster-ordered tokens (host constant)."""
  coords = np.stack(np.meshgrid(*(np.arange(g) for g in grid_shape), indexing="ij"), -1)
  coords = coords.reshape(-1, 3).astype(np.float64)
  parts = []
  for axis, dim in enumerate(axis_dims(head_dim)):
    freqs = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # [dim // 2]
    parts.append(coords[:, axis : axis + 1] * freqs[None])
  return np.concatenate(parts, axis=-1).astype(np.float32)


def rope_angles_traced(
  grid_shape: tuple[int, int, int], head_dim: int, theta: float = 10000.0
) -> jax.Array:
  """`rope_angles` computed on the device from iotas: under jit only the frequency ladder
  ([head_dim // 2] floats) is a constant, where the host table is [tokens, head_dim // 2]
  (144 MiB at 563K tokens, baked into the executable and replicated on every chip); XLA then
  computes each device's share of the sequence where it is used. Equal to `rope_angles` within
  float32 rounding of the product (coordinates are exact; the frequencies are rounded once)."""
  t, h, w = grid_shape
  index = jnp.arange(t * h * w, dtype=jnp.int32)
  coords = (index // (h * w), (index // w) % h, index % w)
  parts = []
  for coord, dim in zip(coords, axis_dims(head_dim), strict=True):
    freqs = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    parts.append(coord.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None])
  return jnp.concatenate(parts, axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """x: [B, N, H, D] with D even, pairs (2i, 2i+1) rotated by angles [N, D // 2]."""
  if angles.shape != (x.shape[1], x.shape[-1] // 2):
    raise ValueError(
      f"angles must have shape [seq, head_dim // 2] = "
      f"{(x.shape[1], x.shape[-1] // 2)}, got {tuple(angles.shape)}"
    )
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  cos, sin = jnp.cos(angles)[:, None], jnp.sin(angles)[:, None]  # [N, 1, D // 2]
  real = pairs[..., 0] * cos - pairs[..., 1] * sin
  imag = pairs[..., 0] * sin + pairs[..., 1] * cos
  return jnp.stack([real, imag], axis=-1).reshape(x.shape).astype(x.dtype)
