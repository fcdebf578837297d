"""Sampling a model trained here (configs without a `video` section): captions -> video.

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
from moga_jax.model.text_to_video import TextToVideo


def generate(model: TextToVideo, cfg, prompts: list[str], *, seed: int) -> np.ndarray:
  """uint8 video [shots * frames_per_shot, H, W, 3], shot i captioned by prompts[i]. cfg: the
  run (a moga_jax.train.run_config.RunConfig, or a ConfigDict typed here): its data section
  (the clip's shape), model.latent_factor, sample section and diffusion.shift."""
  from moga_jax.train.run_config import as_run_config  # diffusion/ stays below train/

  run = as_run_config(cfg)
  d, sample = run.data, run.sample
  if not 1 <= len(prompts) <= d.max_shots:
    raise ValueError(
      f"give between 1 and config.data.max_shots = {d.max_shots} prompts, got {len(prompts)}"
    )
  shots, per_shot = len(prompts), d.frames_per_shot
  captions = jnp.asarray(encode_captions(prompts, rows=shots, length=d.caption_len))[None]
  frame_shot = jnp.repeat(jnp.arange(shots, dtype=jnp.int32), per_shot)[None]
  f = run.model_section.latent_factor
  noise = jax.random.normal(
    jax.random.key(seed), (1, shots * per_shot, d.height // f, d.width // f, 3 * f * f)
  )
  context = model.encode_text(captions)
  empty = model.encode_text(jnp.zeros_like(captions))

  @nnx.jit
  def velocity(model, x, t, context, mask):
    return model.velocity(x, t, context, mask, frame_shot)[0]

  def predict(x, t, conditional):
    ctx, mask = context if conditional else empty
    return velocity(model, x, t, ctx, mask)

  with tqdm(total=sample.steps, desc="sample", unit="step") as bar:
    z = sample_flow(
      predict,
      noise,
      solver=sample.solver,
      steps=sample.steps,
      shift=run.diffusion.shift,
      guidance=sample.guidance,
      progress=lambda _: bar.update(1),
    )
  video = model.to_video(z)[0]
  return video_io.unit_to_pixels(video)
