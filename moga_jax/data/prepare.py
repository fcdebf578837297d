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
from moga_jax.train.run_config import DataConfig, as_section


def prepare_data(data: DataConfig, workdir: Path) -> Path:
  """Returns the prepared dataset folder for the run's data section, building what is missing
  (`data` may still be a ConfigDict data section: it is typed and checked here).

  source_dir "" means synthetic clips in WORKDIR/../data/synthetic, made on first use. The
  prepared array_record dataset lives in a folder named after the source folder and the clip
  shape, so changing the source, frames, fps, fit or resolution never reads a stale dataset.
  Clips are cut to `num_frames` where the config sets it (Wan's 1 + 4k frames), else to shots x
  frames_per_shot, at `fps`, brought to height x width by `fit`. An index with placeholder
  captions (shots nobody captioned) is refused unless `allow_placeholder_captions`.
  """
  data = as_section(data, DataConfig)
  source = Path(data.source_dir) if data.source_dir else Path(workdir).parent / "data" / "synthetic"
  frames = data.frames
  if not (source / "captions.jsonl").exists():
    if data.source_dir:
      raise MissingInputError(f"config.data.source_dir {source} has no captions.jsonl")
    logging.warning("making %d synthetic clips in %s", data.synthetic_videos, source)
    make_synthetic_videos(
      source,
      data.synthetic_videos,
      shots=data.shots,
      frames_per_shot=data.frames_per_shot,
      height=data.height,
      width=data.width,
      fps=data.fps,
      seed=0,
      subject_scale=data.subject_scale,
    )
  _check_captions(source, data)
  fit = data.fit
  # Named after the source folder too: two sources side by side never share a dataset.
  shape = (
    f"{source.name}_{frames}f_{data.fps:g}fps_{data.height}x{data.width}_{fit}"
    f"_s{data.max_shots}_c{data.caption_len}"
  ).replace(".", "p")
  dataset_dir = Path(data.dataset_dir) if data.dataset_dir else source.parent / "prepared" / shape
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
    height=data.height,
    width=data.width,
    max_shots=data.max_shots,
    caption_len=data.caption_len,
    fps=data.fps,
    fit=fit,
  )
  logging.warning("prepared dataset in %s: %s", dataset_dir, summary)
  return find_dataset_dir(dataset_dir)


def _check_captions(source: Path, data: DataConfig) -> None:
  entries = read_index(source)
  missing = sum(s.caption == PLACEHOLDER_CAPTION for e in entries for s in e.shots)
  if missing and not data.allow_placeholder_captions:
    raise InputError(
      f"{source / 'captions.jsonl'} has {missing} shots captioned {PLACEHOLDER_CAPTION!r} "
      "(written by moga_jax.data.shots without --captions); caption them, or pass "
      "--config.data.allow_placeholder_captions=True to train on them anyway"
    )
