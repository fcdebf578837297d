"""Sampling a model trained here (config.pipeline "tiny"): captions -> video.

The Wan path (umT5, the Wan VAE) is `moga_jax.wan.pipeline`; both integrate with
`diffusion.sample_flow`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from moga_jax.data import video_io
from moga_jax.data.captions import encode_captions
from moga_jax.diffusion.flow import sample_flow
from moga_jax.errors import InputError
from moga_jax.model.text_to_video import TextToVideo


def generate(model: TextToVideo, cfg, prompts: list[str], *, seed: int) -> np.ndarray:
  """uint8 video [shots * frames_per_shot, H, W, 3], shot i captioned by prompts[i], with the
  run's sampler settings (its sample section) and a progress bar. cfg: the run (a
  moga_jax.train.run_config.RunConfig, or a ConfigDict typed here)."""
  from moga_jax.train.run_config import as_run_config  # diffusion/ stays below train/

  run = as_run_config(cfg)
  d, s = run.data, run.sample
  if not 1 <= len(prompts) <= d.max_shots:
    raise InputError(
      f"give between 1 and config.data.max_shots = {d.max_shots} prompts, got {len(prompts)}"
    )
  with tqdm(total=s.steps, desc="sample", unit="step") as bar:
    videos = sample_videos(
      model,
      run,
      [prompts],
      seed=seed,
      steps=s.steps,
      guidance=s.guidance,
      solver=s.solver,
      progress=lambda _: bar.update(1),
    )
  return videos[0]


def sample_videos(
  model: TextToVideo,
  cfg,
  prompt_sets: list[list[str]],
  *,
  seed: int,
  steps: int,
  guidance: float,
  solver: str = "euler",
  progress=None,
) -> np.ndarray:
  """uint8 videos [sets, shots * frames_per_shot, H, W, 3]: every set of prompts (each the
  same number of shots) sampled at once, from the noise key(seed) draws for the whole batch.
  cfg: the run, as for `generate`."""
  from moga_jax.train.run_config import as_run_config

  run = as_run_config(cfg)
  d = run.data
  shots, per_shot = len(prompt_sets[0]), d.frames_per_shot
  captions = jnp.asarray(
    np.stack([encode_captions(p, rows=shots, length=d.caption_len) for p in prompt_sets])
  )
  frame_shot = jnp.repeat(jnp.arange(shots, dtype=jnp.int32), per_shot)[None]
  frame_shot = jnp.broadcast_to(frame_shot, (len(prompt_sets), shots * per_shot))
  f = run.model_section.latent_factor
  noise = jax.random.normal(
    jax.random.key(seed),
    (len(prompt_sets), shots * per_shot, d.height // f, d.width // f, 3 * f * f),
  )
  context = model.encode_text(captions)
  empty = model.encode_text(jnp.zeros_like(captions))

  @nnx.jit
  def velocity(model, x, t, context, mask):
    return model.velocity(x, t, context, mask, frame_shot)[0]

  def predict(x, t, conditional):
    ctx, mask = context if conditional else empty
    return velocity(model, x, t, ctx, mask)

  z = sample_flow(
    predict,
    noise,
    solver=solver,
    steps=steps,
    shift=run.diffusion.shift,
    guidance=guidance,
    progress=progress,
  )
  return video_io.unit_to_pixels(model.to_video(z))
