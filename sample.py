"""Sample a multi-shot video from a trained run: one shot per --prompt.

  python sample.py --config configs/tiny.py --workdir runs/tiny \
      --prompt "a red circle moving right on a blue background" \
      --prompt "a yellow square moving up on a green background" --output runs/tiny/sample.mp4

Loads the latest checkpoint of WORKDIR, integrates the flow from noise with classifier-free
guidance (a progress bar over steps), writes the mp4 and a PNG contact sheet beside it (one
row per shot, labelled with its prompt).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from moga_jax import video_io
from moga_jax.checkpoint import Checkpointer
from moga_jax.config_checks import validate_config
from moga_jax.data.captions import encode_captions
from moga_jax.diffusion import euler_sample
from moga_jax.model import TextToVideo
from moga_jax.training import make_optimizer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "The run's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to load.", required=True)
_PROMPTS = flags.DEFINE_multi_string("prompt", None, "Caption of one shot; repeat per shot.",
                                     required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Output mp4 (default WORKDIR/sample.mp4).")


def load_model(cfg, workdir: Path) -> TextToVideo:
  checkpoints = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
  if checkpoints.latest_step() is None:
    raise FileNotFoundError(
        f"no checkpoint in {workdir / 'checkpoints'}: train first, e.g. "
        f"`python train.py --config configs/tiny.py --workdir {workdir}`")
  model = TextToVideo(cfg.model, rngs=nnx.Rngs(cfg.seed))
  optimizer = make_optimizer(model, cfg.train)  # restored with the model, then dropped
  checkpoints.restore((model, optimizer), model_config=cfg.model.to_dict())
  checkpoints.close()
  return model


def generate(model: TextToVideo, cfg, prompts: list[str], *, seed: int) -> np.ndarray:
  """uint8 video [shots * frames_per_shot, H, W, 3], shot i captioned by prompts[i]."""
  d = cfg.data
  if not 1 <= len(prompts) <= d.max_shots:
    raise ValueError(f"give between 1 and config.data.max_shots = {d.max_shots} prompts, got "
                     f"{len(prompts)}")
  shots, per_shot = len(prompts), d.frames_per_shot
  captions = jnp.asarray(encode_captions(prompts, rows=shots, length=d.caption_len))[None]
  frame_shot = jnp.repeat(jnp.arange(shots, dtype=jnp.int32), per_shot)[None]
  f = cfg.model.latent_factor
  noise = jax.random.normal(jax.random.key(seed),
                            (1, shots * per_shot, d.height // f, d.width // f, 3 * f * f))
  context = model.encode_text(captions)
  empty = model.encode_text(jnp.zeros_like(captions))

  @nnx.jit
  def velocity(model, x, t, context, mask):
    return model.velocity(x, t, context, mask, frame_shot)[0]

  def predict(x, t, conditional):
    ctx, mask = context if conditional else empty
    return velocity(model, x, t, ctx, mask)

  with tqdm(total=cfg.sample.steps, desc="sample", unit="step") as bar:
    z = euler_sample(predict, noise, steps=cfg.sample.steps, shift=cfg.diffusion.shift,
                     guidance=cfg.sample.guidance, progress=lambda _: bar.update(1))
  video = model.to_video(z)[0]
  return np.asarray(jnp.clip((video + 1.0) * 127.5, 0, 255).round().astype(jnp.uint8))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value
  validate_config(cfg)
  workdir = Path(_WORKDIR.value)
  output = Path(_OUTPUT.value or workdir / "sample.mp4")
  output.parent.mkdir(parents=True, exist_ok=True)
  prompts = list(_PROMPTS.value)
  video = generate(load_model(cfg, workdir), cfg, prompts, seed=cfg.sample.seed)
  video_io.write_mp4(output, video, fps=cfg.data.fps)
  per_shot = cfg.data.frames_per_shot
  # Small frames are blown up (nearest neighbour) so the labels do not hide half of them.
  zoom = max(1, 128 // max(video.shape[1:3]))
  big = video.repeat(zoom, axis=1).repeat(zoom, axis=2)
  sheet = video_io.contact_sheet(big, output.with_suffix(".png"), columns=per_shot,
                                 labels=prompts)
  print(f"video: {output} ({len(video)} frames, {len(prompts)} shots of {per_shot})\n"
        f"contact sheet: {sheet}")


if __name__ == "__main__":
  app.run(main)
