"""What differs between the products above the model, chosen once from `config.pipeline`.

"tiny": the stand-in TextToVideo, trained from scratch on pixels (synthetic clips or a source
folder) and sampled from a run trained here. "wan": a Wan 2.1 VideoDiT fine-tuned from converted
weights (`--init`) on latents and caption states precomputed with the converted VAE and umT5,
sampled with them. The training loop (moga_jax.train.loop), the commands and the planner ask
the pipeline instead of looking for a `video` section in the config.

The Wan pieces (the `wan` extra) are imported only when a Wan pipeline uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from moga_jax.errors import ConfigError, InputError


class Samples(NamedTuple):
  """A sampled video: uint8 [F, H, W, 3], the shot of each frame (int [F]) and its frame rate."""

  video: np.ndarray
  frame_shot: np.ndarray
  fps: float


def pipeline_for(cfg) -> TinyPipeline | WanPipeline:
  """The pipeline object of config.pipeline (`run_config.pipeline_name`: "tiny" when a config
  built by hand has no such field and no `video` section)."""
  from moga_jax.train.run_config import pipeline_name

  return {"tiny": TinyPipeline, "wan": WanPipeline}[pipeline_name(cfg)]()


class _Pipeline:
  """What both pipelines share: a run trained here loads the same way (moga_jax.train.state)."""

  def load_trained(self, cfg, workdir, *, use_ema: bool = True):
    """The model of the newest checkpoint in WORKDIR (its EMA when the run kept one)."""
    from moga_jax.train.state import load_trained

    return load_trained(cfg, workdir, use_ema=use_ema)


class TinyPipeline(_Pipeline):
  """The stand-in text-to-video model: pixels in, its own text encoder and latent projection."""

  name = "tiny"

  def configure(self, cfg, converted: str | None):
    """The config to run with; `converted` (--init, --weights) is refused: nothing converts."""
    if converted is not None:
      raise ConfigError(
        f"{converted}: converted Wan weights (--init, --weights) need config.pipeline = 'wan' "
        "(e.g. configs/wan1_3b_moga.py); this config's pipeline is 'tiny'"
      )
    return cfg

  def build_model(self, cfg, *, rules=None):
    """The run's TextToVideo (cfg: a RunConfig, or a ConfigDict typed here)."""
    from flax import nnx

    from moga_jax.model.text_to_video import TextToVideo
    from moga_jax.train.run_config import as_run_config

    run = as_run_config(cfg)
    return TextToVideo(run.model_section, rules=rules, rngs=nnx.Rngs(run.seed))

  def prepare_data(self, cfg, workdir: Path | None, init: str | None) -> Path:
    """The prepared dataset (made on first use: synthetic clips beside WORKDIR without a
    config.data.source_dir)."""
    del init  # refused by `configure`
    from moga_jax.data.prepare import prepare_data

    if workdir is None and not cfg.data.source_dir:
      raise ConfigError("a run without a workdir needs config.data.source_dir")
    return prepare_data(cfg.data, workdir)

  @property
  def loss(self) -> Callable:
    from moga_jax.train.state import loss_fn

    return loss_fn

  def init_weights(self, model, cfg, init: str | None) -> None:
    """Nothing: the tiny model trains from scratch."""

  def sample(
    self,
    cfg,
    prompts: Sequence[str],
    *,
    seed: int,
    workdir: str | Path | None = None,
    weights: str | None = None,
    negative_prompt: str | None = None,
  ) -> Samples:
    """One shot per prompt from the run in WORKDIR (its EMA when it kept one)."""
    del weights  # refused by `configure`
    if workdir is None:
      raise InputError("give --workdir, a run trained here")
    if negative_prompt is not None:
      raise InputError(
        "--negative_prompt needs a Wan config (the tiny model guides against the empty caption)"
      )
    from moga_jax.diffusion.sampling import generate

    video = generate(self.load_trained(cfg, workdir), cfg, list(prompts), seed=seed)
    frame_shot = np.repeat(np.arange(len(prompts)), cfg.data.frames_per_shot)
    return Samples(video, frame_shot, cfg.data.fps)


class WanPipeline(_Pipeline):
  """A Wan 2.1 DiT (MoGA in place of its self-attention) with the converted umT5 and VAE."""

  name = "wan"

  def configure(self, cfg, converted: str | None):
    """The config with the DiT's widths of the converted checkpoint (when given)."""
    if converted is None:
      return cfg
    from moga_jax.wan.converted_folder import with_converted_widths

    return with_converted_widths(cfg, converted)

  def build_model(self, cfg, *, rules=None):
    """The run's VideoDiT (cfg: a RunConfig, or a ConfigDict typed here)."""
    from flax import nnx

    from moga_jax.model.dit import VideoDiT
    from moga_jax.train.run_config import as_run_config

    run = as_run_config(cfg)
    return VideoDiT.from_config(run.model, rules=rules, rngs=nnx.Rngs(run.seed))

  def prepare_data(self, cfg, workdir: Path | None, init: str | None) -> Path:
    """Latents and caption states of the training clips, encoded once with `init`'s VAE and
    umT5 (moga_jax.wan.latent_data)."""
    if init is None:
      raise ConfigError(
        "config.pipeline 'wan' trains a Wan DiT on precomputed latents: "
        "pass --init DIR, a folder written by `python -m moga_jax.wan.convert`"
      )
    if workdir is None:
      raise ConfigError("a Wan run needs a workdir (its latents are written beside it)")
    from moga_jax.wan.latent_data import prepare_latents

    return prepare_latents(cfg, workdir, init)

  @property
  def loss(self) -> Callable:
    from moga_jax.train.state import latent_loss_fn

    return latent_loss_fn

  def init_weights(self, model, cfg, init: str | None) -> None:
    """The converted transformer's weights (MoGA's routers stay initialised)."""
    from moga_jax.wan.converted_folder import restore_dit

    restore_dit(init, model, cfg.model)

  def sample(
    self,
    cfg,
    prompts: Sequence[str],
    *,
    seed: int,
    workdir: str | Path | None = None,
    weights: str | None = None,
    negative_prompt: str | None = None,
  ) -> Samples:
    """One shot per prompt: the DiT of a run fine-tuned here (WORKDIR) or the converted one;
    umT5 and the VAE always come from the converted folder (`weights`)."""
    if weights is None:
      raise InputError(
        "config.pipeline 'wan' samples a Wan DiT: give --weights (a converted Wan folder: umT5 "
        "and the VAE, and the DiT unless --workdir names a run fine-tuned from it)"
      )
    if negative_prompt is not None:
      cfg.sample.negative_prompt = negative_prompt
    from tqdm import tqdm

    from moga_jax.wan import pipeline as wan_pipeline

    dit = self.load_trained(cfg, workdir) if workdir is not None else None
    with tqdm(total=cfg.sample.steps, desc="sample", unit="step") as bar:
      video, frame_shot = wan_pipeline.generate(
        weights, cfg, list(prompts), seed=seed, dit=dit, progress=lambda _: bar.update(1)
      )
    return Samples(video, frame_shot, cfg.video.fps)
