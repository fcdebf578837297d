"""The whole text-to-video model of a config: text encoder + latent codec + VideoDiT."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moga_jax.model import latents
from moga_jax.model.config import DiTConfig
from moga_jax.model.dit import VideoDiT
from moga_jax.model.text import ByteTextEncoder
from moga_jax.parallel.sharding import ShardingRules


def frame_shots(shot_bounds: jax.Array, num_shots: jax.Array, num_frames: int) -> jax.Array:
  """Shot index of every frame: [B, S, 2] (start, end) and [B] counts -> int32 [B, F].

  Frames outside every shot get -1 (they then attend to no caption).
  """
  frames = jnp.arange(num_frames)[None, None, :]  # [1, 1, F]
  start, end = shot_bounds[..., 0:1], shot_bounds[..., 1:2]  # [B, S, 1]
  valid = jnp.arange(shot_bounds.shape[1])[None, :, None] < num_shots[:, None, None]
  inside = (frames >= start) & (frames < end) & valid  # [B, S, F]
  return jnp.where(inside.any(axis=1), jnp.argmax(inside, axis=1), -1).astype(jnp.int32)


def dit_from_config(
  m: ml_collections.ConfigDict, *, rules: ShardingRules | None = None, rngs: nnx.Rngs
) -> VideoDiT:
  """The VideoDiT of a config's model section (`DiTConfig.from_model_section`)."""
  return VideoDiT.from_config(DiTConfig.from_model_section(m), rules=rules, rngs=rngs)


class TextToVideo(nnx.Module):
  """Captions (UTF-8 bytes [B, S, L]) and noisy latents in, velocity out."""

  def __init__(
    self, cfg: ml_collections.ConfigDict, *, rules: ShardingRules | None = None, rngs: nnx.Rngs
  ):
    self.latent_factor = cfg.latent_factor
    self.text_encoder = ByteTextEncoder(
      cfg.text_dim,
      max_len=cfg.caption_len,
      num_layers=cfg.text_layers,
      param_dtype=jnp.dtype(cfg.get("param_dtype", "float32")),
      rngs=rngs,
    )
    self.dit = dit_from_config(cfg, rules=rules, rngs=rngs)

  def encode_text(self, captions: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.text_encoder(captions)

  def velocity(self, x_t, t, context, context_mask, frame_shot):
    return self.dit(x_t, t, context, context_mask, frame_shot)

  def to_latents(self, video: jax.Array) -> jax.Array:
    return latents.encode(video, self.latent_factor)

  def to_video(self, z: jax.Array) -> jax.Array:
    return latents.decode(z, self.latent_factor)
