"""Precomputed Wan inputs: a video dataset through the Wan VAE and umT5, stored once.

Fine-tuning a Wan-sized DiT spends most of a step in the DiT; encoding every clip with the VAE
and every caption with umT5-XXL on every step would double that and hold both encoders in
accelerator memory. So the prepared video dataset (moga_jax.data.builder) is encoded once into
a second TF-free array_record dataset:

  latents    float16 [F', H/8, W/8, C]  VAE posterior means, normalised as the DiT sees them
  context    float16 [S, L, text_dim]   umT5 states of each shot's caption, zero past its end
  frame_shot int32 [F']                 shot of each latent frame (-1: no shot)

plus null_context.npy (the empty caption's states, used for caption dropout, as the sampler
uses it for guidance). train.py builds it with `prepare_latents` on first use, on whatever
device it runs on (one process encodes; the others wait).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from flax import nnx
from tqdm import tqdm

from moga_jax.data import video_io
from moga_jax.data.captions import decode_captions
from moga_jax.data.pipeline import NULL_CONTEXT, find_dataset_dir
from moga_jax.data.prepare import prepare_data
from moga_jax.errors import InputError
from moga_jax.model.text_to_video import frame_shots
from moga_jax.train.run_config import RunConfig, as_run_config
from moga_jax.wan.converted_folder import load_converted_tokenizer, load_text_encoder, load_vae
from moga_jax.wan.tokenizer import encode_prompts
from moga_jax.wan.umt5 import prompt_embeddings

SUMMARY = "latents_summary.json"


@dataclasses.dataclass(eq=False)
class WanLatentConfig(tfds.core.BuilderConfig):
  """What the examples are made from and their shapes (the name encodes the shapes)."""

  name: str = ""
  video_dir: str = ""  # the prepared video dataset (its dataset_info.json folder)
  weights: str = ""  # the converted Wan folder whose VAE and umT5 encode
  latent: tuple[int, int, int, int] = (1, 1, 1, 1)  # (F', h, w, C)
  shots: int = 1
  caption_len: int = 512  # umT5 tokens
  text_dim: int = 4096

  def __post_init__(self):
    if not self.name:
      f, h, w, c = self.latent
      self.name = f"f{f}_{h}x{w}x{c}_s{self.shots}_t{self.caption_len}x{self.text_dim}"


class WanLatents(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Latents + caption states of a prepared video dataset; construct with a WanLatentConfig."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "VAE latents, umT5 states, frame shots."}
  code_path = None  # nothing is downloaded (see MultiShotVideos)

  def __init__(
    self,
    *,
    config: WanLatentConfig,
    data_dir: str | os.PathLike,
    run: RunConfig | None = None,
    **kwargs,
  ):
    self._run = run  # the run config, needed only to generate
    super().__init__(config=config, data_dir=os.fspath(data_dir), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    raw = tfds.features.Encoding.BYTES
    return tfds.core.DatasetInfo(
      builder=self,
      description="Wan VAE latents and umT5 caption states of multi-shot clips.",
      features=tfds.features.FeaturesDict(
        {
          "latents": tfds.features.Tensor(shape=c.latent, dtype=np.float16, encoding=raw),
          "context": tfds.features.Tensor(
            shape=(c.shots, c.caption_len, c.text_dim), dtype=np.float16, encoding=raw
          ),
          "frame_shot": tfds.features.Tensor(shape=(c.latent[0],), dtype=np.int32),
          "name": tfds.features.Tensor(shape=(), dtype=np.str_),
        }
      ),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    c, run = self.builder_config, self._run
    source = tfds.builder_from_directory(c.video_dir).as_data_source(split="train")
    tokenizer = load_converted_tokenizer(c.weights)
    encoder = load_text_encoder(c.weights, param_dtype=jnp.dtype(run.sample.text_encoder_dtype))
    vae = load_vae(c.weights)
    embed = nnx.jit(prompt_embeddings)
    encode = nnx.jit(lambda vae, video: vae.encode_normalized(video))

    def states(captions: list[str]) -> np.ndarray:
      ids, mask = encode_prompts(tokenizer, captions, max_len=c.caption_len)
      return np.asarray(embed(encoder, jnp.asarray(ids), jnp.asarray(mask)), np.float32)

    self._null_context = states([""])[0].astype(np.float16)
    stride = run.video.vae_stride[0]
    for i in tqdm(range(len(source)), desc="encode clips", unit="clip"):
      record = source[i]
      video = jnp.asarray(video_io.pixels_to_unit(record["video"]))[None]
      latents = np.asarray(encode(vae, video)[0])
      shots = int(record["num_shots"])
      context = np.zeros((c.shots, c.caption_len, c.text_dim), np.float16)
      context[:shots] = states(decode_captions(record["captions"], shots)[: c.shots])
      # Latent frame j stands for pixel frames st*j-st+1 .. st*j: it takes the first one's shot.
      pixel_shot = np.asarray(
        frame_shots(record["shot_bounds"][None], np.array([shots]), video.shape[1])
      )[0]
      first = np.maximum(stride * np.arange(c.latent[0]) - stride + 1, 0)
      name = np.bytes_(record["name"]).decode()
      yield (
        name,
        {
          "latents": latents.astype(np.float16),
          "context": context,
          "frame_shot": pixel_shot[first].astype(np.int32),
          "name": name,
        },
      )

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    # self.data_dir is still the temporary folder: these land atomically with the data.
    np.save(Path(self.data_dir) / NULL_CONTEXT, self._null_context)
    c = self.builder_config
    (Path(self.data_dir) / SUMMARY).write_text(
      json.dumps(
        {
          "video_dir": c.video_dir,
          "weights": c.weights,
          "examples": self.info.splits["train"].num_examples,
        },
        indent=2,
      )
      + "\n"
    )


def latent_config(run: RunConfig, video_dir: str | Path, weights: str | Path) -> WanLatentConfig:
  frames, h, w = run.latent_grid
  return WanLatentConfig(
    video_dir=str(Path(find_dataset_dir(video_dir)).resolve()),
    weights=str(Path(weights).resolve()),
    latent=(frames, h, w, run.model.in_channels),
    shots=run.video.shots,
    caption_len=run.video.caption_len,
    text_dim=run.model.text_dim,
  )


def prepare_latents(cfg: RunConfig, workdir: str | Path, weights: str | Path) -> Path:
  """The latent dataset of `cfg`, built (videos first, then their encodings) if missing.

  It lives next to the prepared videos, under a folder named after the converted weights; a
  dataset found there that was encoded from other videos or weights is refused. cfg: a
  RunConfig (or a ConfigDict, typed here).
  """
  run = as_run_config(cfg)
  video_dir = prepare_data(run.data, Path(workdir))
  config = latent_config(run, video_dir, weights)
  root = Path(video_dir).parents[2] / "latents" / Path(weights).resolve().name
  builder = WanLatents(config=config, data_dir=root, run=run)
  dataset_dir = Path(builder.data_dir)
  if (dataset_dir / SUMMARY).is_file():
    summary = json.loads((dataset_dir / SUMMARY).read_text())
    if (summary["video_dir"], summary["weights"]) != (config.video_dir, config.weights):
      raise InputError(
        f"{dataset_dir} holds latents of {summary['video_dir']} through "
        f"{summary['weights']}, not of {config.video_dir} through "
        f"{config.weights}; remove it to rebuild"
      )
    return dataset_dir
  logging.warning("encoding %s with the VAE and text encoder of %s", video_dir, weights)
  builder.download_and_prepare(
    file_format="array_record",
    download_config=(tfds.download.DownloadConfig(try_download_gcs=False)),
  )
  return dataset_dir
