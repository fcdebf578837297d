"""Text to video with converted Wan 2.1 weights: umT5 -> flow matching with MoGA -> Wan VAE.

Each prompt is one shot: the video's latent frames are split into consecutive, near-equal
shots, each cross-attending to its own caption. Components are loaded one at a time and dropped
when done (text encoder, then DiT, then VAE), so peak memory is the largest of them plus
activations, not their sum. Guidance follows Wan: v = v_neg + g (v_prompt - v_neg), with the
negative prompt's embedding in every shot, both branches in one batch of two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moga_jax.data import video_io
from moga_jax.diffusion.flow import sample_flow
from moga_jax.errors import InputError
from moga_jax.model.dit import VideoDiT
from moga_jax.train.run_config import RunConfig, SampleConfig, VideoConfig, as_run_config
from moga_jax.wan.converted_folder import (
  load_converted_tokenizer,
  load_dit,
  load_text_encoder,
  load_vae,
)
from moga_jax.wan.tokenizer import encode_prompts
from moga_jax.wan.umt5 import prompt_embeddings


@dataclasses.dataclass(frozen=True)
class VideoGeometry:
  """Pixel and latent sizes of one sample and which shot each latent frame belongs to."""

  frames: int
  height: int
  width: int
  latent: tuple[int, int, int]  # (F', H', W')
  temporal_stride: int
  frame_shot: np.ndarray  # int32 [F']

  @property
  def pixel_shot(self) -> np.ndarray:
    """Shot of each decoded frame: frame 0 is latent 0, frames 4j-3..4j are latent j."""
    s = self.temporal_stride
    return self.frame_shot[(np.arange(self.frames) + s - 1) // s]


def video_geometry(video: VideoConfig, shots: int) -> VideoGeometry:
  """The run's video size (checked against the VAE strides) with its latent frames split into
  `shots` consecutive, near-equal shots."""
  v = video
  latent = video.latent_grid
  if not 1 <= shots <= latent[0]:
    raise InputError(
      f"{shots} prompts for {latent[0]} latent frames: give between 1 and "
      f"{latent[0]} prompts (or raise config.video.frames)"
    )
  frame_shot = (np.arange(latent[0]) * shots // latent[0]).astype(np.int32)
  return VideoGeometry(v.frames, v.height, v.width, latent, v.vae_stride[0], frame_shot)


def encode_text(
  weights: str | Path, sample: SampleConfig, prompts: Sequence[str], *, caption_len: int
) -> np.ndarray:
  """umT5 embeddings of prompts + [the negative prompt], float32 [len(prompts) + 1,
  caption_len, text_dim], zero past each prompt's end, as Wan's pipeline hands them on."""
  tokenizer = load_converted_tokenizer(weights)
  encoder = load_text_encoder(weights, param_dtype=jnp.dtype(sample.text_encoder_dtype))
  ids, mask = encode_prompts(tokenizer, [*prompts, sample.negative_prompt], max_len=caption_len)
  embed = nnx.jit(prompt_embeddings)(encoder, jnp.asarray(ids), jnp.asarray(mask))
  return np.asarray(embed.astype(jnp.float32))


def cfg_velocity(dit, x, t, context, mask, frame_shot, guidance: float) -> jax.Array:
  """The DiT's velocity at x [1, ...] and t with classifier-free guidance: one batch of the
  conditional caption (row 0) and, when there are two rows, the unconditional one (row 1),
  combined as uncond + guidance x (cond - uncond). One row: the conditional velocity."""
  batch = context.shape[0]
  v, _ = dit(
    jnp.broadcast_to(x, (batch, *x.shape[1:])),
    jnp.broadcast_to(t, (batch,)),
    context,
    mask,
    frame_shot,
  )
  return v[:1] if batch == 1 else v[1:] + guidance * (v[:1] - v[1:])


def sample_latents(
  dit: VideoDiT,
  run: RunConfig,
  embeddings: np.ndarray,
  geometry: VideoGeometry,
  *,
  seed: int,
  progress: Callable[[int], None] | None = None,
) -> jax.Array:
  """Normalised latents [1, F', H', W', C] from noise, with guidance against the last row of
  `embeddings` (the negative prompt); the run's sample and diffusion sections drive it."""
  sample = run.sample
  shots = embeddings.shape[0] - 1
  prompt = jnp.asarray(embeddings[:shots])
  negative = jnp.broadcast_to(jnp.asarray(embeddings[shots:]), prompt.shape)
  guidance = sample.guidance
  # Wan attends to all caption_len positions (the padding is zeros), so the mask is all True.
  context = jnp.stack([prompt, negative]) if guidance != 1.0 else prompt[None]
  mask = jnp.ones(context.shape[:3], bool)
  frame_shot = jnp.broadcast_to(
    jnp.asarray(geometry.frame_shot), (context.shape[0], len(geometry.frame_shot))
  )

  # The caption states are arguments, not closed-over constants baked into the program.
  @nnx.jit
  def guided_velocity(dit, x, t, context, mask, frame_shot):
    return cfg_velocity(dit, x, t, context, mask, frame_shot, guidance)

  noise = jax.random.normal(jax.random.key(seed), (1, *geometry.latent, run.model.in_channels))
  return sample_flow(
    lambda x, t, _: guided_velocity(dit, x, t, context, mask, frame_shot),
    noise,
    solver=sample.solver,
    steps=sample.steps,
    shift=run.diffusion.shift,
    guidance=1.0,
    progress=progress,
  )


def decode_latents(weights: str | Path, latents: jax.Array) -> np.ndarray:
  """uint8 video [T, H, W, 3] from normalised latents [1, F', H', W', C]."""
  vae = load_vae(weights)
  video = nnx.jit(lambda vae, z: vae.decode_normalized(z))(vae, latents)[0]
  return video_io.unit_to_pixels(video)


def generate(
  weights: str | Path,
  cfg: RunConfig,
  prompts: Sequence[str],
  *,
  seed: int,
  progress: Callable[[int], None] | None = None,
  dit: VideoDiT | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """-> (uint8 video [T, H, W, 3], shot index of every frame [T]). umT5 and the VAE come from
  `weights`, the DiT too unless given (a fine-tuned one: `sample.py --workdir --weights`).
  cfg: a RunConfig (or a ConfigDict, typed and checked here)."""
  run = as_run_config(cfg)
  prompts = list(prompts)
  geometry = video_geometry(run.video, len(prompts))
  embeddings = encode_text(weights, run.sample, prompts, caption_len=run.video.caption_len)
  if dit is None:
    dit = load_dit(weights, run.model_section, seed=run.seed)
  latents = sample_latents(dit, run, embeddings, geometry, seed=seed, progress=progress)
  return decode_latents(weights, latents), geometry.pixel_shot
