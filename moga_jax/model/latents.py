"""Latent space of the tiny default: a fixed space-to-depth fold of pixels (a stand-in).

The Wan VAE (4x time, 8x space, 16 channels) cannot be downloaded here. The tiny config instead
folds each f x f pixel block into channels: lossless, parameter-free and exactly invertible,
so the DiT sees a small spatial grid while sampling stays decodable. Real latents from the Wan
VAE use the same [B, F, H, W, C] layout and plug in here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def encode(video: jax.Array, factor: int) -> jax.Array:
  """[B, F, H, W, 3] in [-1, 1] -> [B, F, H / f, W / f, 3 f^2]."""
  b, f, h, w, c = video.shape
  if h % factor or w % factor:
    raise ValueError(
      f"video height and width must be multiples of the latent factor {factor}, got {h}x{w}"
    )
  x = video.reshape(b, f, h // factor, factor, w // factor, factor, c)
  return jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6)).reshape(b, f, h // factor, w // factor, -1)


def decode(latents: jax.Array, factor: int) -> jax.Array:
  """Inverse of `encode`."""
  b, f, h, w, cf = latents.shape
  c = cf // (factor * factor)
  x = latents.reshape(b, f, h, w, factor, factor, c)
  return jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6)).reshape(b, f, h * factor, w * factor, c)
