"""Find or make the training data a config asks for: source videos, then the prepared dataset."""

from __future__ import annotations

import json
from pathlib import Path

from absl import logging

from moga_jax.data.builder import SUMMARY_FILENAME, build_dataset
from moga_jax.data.index import PLACEHOLDER_CAPTION, read_index
from moga_jax.data.pipeline import find_dataset_dir
from moga_jax.data.synthetic import make_synthetic_videos
from moga_jax.errors import ConfigError, InputError, MissingInputError


def prepare_data(cfg, workdir: Path) -> Path:
  """Returns the prepared dataset folder for `cfg` (config.data), building what is missing.

  source_dir "" means synthetic clips in WORKDIR/../data/synthetic, made on first use. The
  prepared array_record dataset lives in a folder named after the source folder and the clip
  shape, so changing the source, frames, fps, fit or resolution never reads a stale dataset.
  Clips are cut to `num_frames` where the config sets it (Wan's 1 + 4k frames), else to shots x
  frames_per_shot, at `fps`, brought to height x width by `fit`. An index with placeholder
  captions (shots nobody captioned) is refused unless `allow_placeholder_captions`.
  """
  source = Path(cfg.source_dir) if cfg.source_dir else Path(workdir).parent / "data" / "synthetic"
  frames = cfg.get("num_frames") or cfg.shots * cfg.frames_per_shot
  if not (source / "captions.jsonl").exists():
    if cfg.source_dir:
      raise MissingInputError(f"config.data.source_dir {source} has no captions.jsonl")
    logging.warning("making %d synthetic clips in %s", cfg.synthetic_videos, source)
    make_synthetic_videos(
      source,
      cfg.synthetic_videos,
      shots=cfg.shots,
      frames_per_shot=cfg.frames_per_shot,
      height=cfg.height,
      width=cfg.width,
      fps=cfg.fps,
      seed=0,
      subject_scale=cfg.subject_scale,
    )
  _check_captions(source, cfg)
  fit = cfg.get("fit", "crop")
  # Named after the source folder too: two sources side by side never share a dataset.
  shape = (
    f"{source.name}_{frames}f_{cfg.fps:g}fps_{cfg.height}x{cfg.width}_{fit}"
    f"_s{cfg.max_shots}_c{cfg.caption_len}"
  ).replace(".", "p")
  dataset_dir = Path(cfg.dataset_dir) if cfg.dataset_dir else source.parent / "prepared" / shape
  try:
    found = find_dataset_dir(dataset_dir)
  except ValueError:
    found = None
  if found is not None:
    built_from = json.loads((found / SUMMARY_FILENAME).read_text()).get("source_dir")
    if built_from != str(source.resolve()):
      raise ConfigError(
        f"the prepared dataset in {found} was built from {built_from}, not from "
        f"config.data.source_dir {source.resolve()}; leave config.data.dataset_dir empty (each "
        "source then gets its own dataset beside it) or point it at another folder"
      )
    return found
  summary = build_dataset(
    source,
    dataset_dir,
    num_frames=frames,
    height=cfg.height,
    width=cfg.width,
    max_shots=cfg.max_shots,
    caption_len=cfg.caption_len,
    fps=cfg.fps,
    fit=fit,
  )
  logging.warning("prepared dataset in %s: %s", dataset_dir, summary)
  return find_dataset_dir(dataset_dir)


def _check_captions(source: Path, cfg) -> None:
  entries = read_index(source)
  missing = sum(s.caption == PLACEHOLDER_CAPTION for e in entries for s in e.shots)
  if missing and not cfg.get("allow_placeholder_captions", False):
    raise InputError(
      f"{source / 'captions.jsonl'} has {missing} shots captioned {PLACEHOLDER_CAPTION!r} "
      "(written by moga_jax.data.shots without --captions); caption them, or pass "
      "--config.data.allow_placeholder_captions=True to train on them anyway"
    )
