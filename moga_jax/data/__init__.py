"""Data layer: synthetic multi-shot videos, a TF-free TFDS builder and a resumable grain loader."""

from moga_jax.data.builder import (
  MultiShotConfig,
  MultiShotVideos,
  SkippedVideoWarning,
  build_dataset,
)
from moga_jax.data.captions import decode_captions, encode_captions
from moga_jax.data.index import Shot, VideoEntry, read_index
from moga_jax.data.pipeline import find_dataset_dir, make_loader
from moga_jax.data.synthetic import make_synthetic_videos

__all__ = [
  "MultiShotConfig",
  "MultiShotVideos",
  "Shot",
  "SkippedVideoWarning",
  "VideoEntry",
  "build_dataset",
  "decode_captions",
  "encode_captions",
  "find_dataset_dir",
  "make_loader",
  "make_synthetic_videos",
  "read_index",
]
