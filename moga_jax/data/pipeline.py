"""Resumable, sharded grain loader over the array_record files written by the builder.

Records are read with `as_data_source` (random access, no TensorFlow) from a ReadOnlyBuilder
restored from the dataset's own dataset_info.json, so the builder's code and source videos are
not needed at training time.
"""

from __future__ import annotations

import os
from pathlib import Path

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from pallas_kernels.validation import check_int

__all__ = ["BATCH_KEYS", "find_dataset_dir", "make_loader"]

BATCH_KEYS = ("video", "captions", "shot_bounds", "num_shots")
_INFO_FILENAME = "dataset_info.json"
_READ_THREADS = 4


def find_dataset_dir(data_dir: str | os.PathLike) -> Path:
  """The prepared dataset folder: data_dir itself, or the only one below it.

  Accepts the version folder (.../multi_shot_videos/<config>/1.0.0, as returned in
  build_dataset's summary) or the data_dir given to build_dataset when it holds one dataset.
  """
  data_dir = Path(data_dir)
  if not data_dir.is_dir():
    raise ValueError(f"data_dir {data_dir} is not a folder; run build_dataset first")
  if (data_dir / _INFO_FILENAME).is_file():
    return data_dir
  # <name>/<config>/<version>/ or, for builders without configs, <name>/<version>/. tfds writes
  # into incomplete.* folders first; those are builds in progress or crashed.
  found = sorted(
    info.parent
    for pattern in (f"*/*/*/{_INFO_FILENAME}", f"*/*/{_INFO_FILENAME}")
    for info in data_dir.glob(pattern)
    if not any(part.startswith("incomplete.") for part in info.relative_to(data_dir).parts)
  )
  if not found:
    raise ValueError(
      f"data_dir {data_dir} holds no prepared dataset (no {_INFO_FILENAME} in it or in "
      "<name>/<config>/<version>/ below it); run build_dataset first"
    )
  if len(found) > 1:
    listing = ", ".join(str(p) for p in found)
    raise ValueError(f"data_dir {data_dir} holds {len(found)} datasets, pass one of: {listing}")
  return found[0]


class _ToModelInputs(grain.transforms.Map):
  """uint8 video -> float32 in [-1, 1]; fixes dtypes so batches stack into plain arrays."""

  def __init__(self, include_name: bool):
    self._include_name = include_name

  def map(self, features: dict) -> dict:
    out = {
      "video": np.asarray(features["video"], np.float32) * np.float32(1 / 127.5) - 1.0,
      "captions": np.asarray(features["captions"], np.uint8),
      "shot_bounds": np.asarray(features["shot_bounds"], np.int32),
      "num_shots": np.asarray(features["num_shots"], np.int32),
    }
    if self._include_name:
      out["name"] = np.bytes_(features["name"])
    return out


def make_loader(
  data_dir: str | os.PathLike,
  *,
  batch_size: int,
  seed: int,
  shard_index: int = 0,
  shard_count: int = 1,
  num_epochs: int | None = None,
  split: str = "train",
  worker_count: int = 0,
  include_name: bool = False,
) -> grain.DataLoaderIterator:
  """Iterator of batches: dicts of numpy arrays (see BATCH_KEYS), forever if num_epochs is None.

  video float32 [B, F, H, W, 3] in [-1, 1]; captions uint8 [B, S, L]; shot_bounds int32
  [B, S, 2]; num_shots int32 [B]; with include_name also name bytes [B] (debugging only: it
  cannot go to a device).

  Process shard_index of shard_count reads a contiguous 1/shard_count of the records, each
  shard the same size (up to shard_count - 1 records are left out) so every process takes the
  same number of steps. Records are shuffled within the shard by seed, afresh every epoch;
  batches never mix in a partial batch (drop_remainder), but may span an epoch boundary.

  The iterator's get_state() -> bytes and set_state(bytes) resume exactly: restoring the state
  taken after k batches into a loader made with the same arguments yields batch k + 1 next.
  worker_count > 0 decodes in that many child processes; a state only restores into a loader
  with the same worker_count.
  """
  batch_size = check_int("batch_size", batch_size, minimum=1)
  seed = check_int("seed", seed, minimum=0, maximum=2**32 - 1)
  shard_count = check_int("shard_count", shard_count, minimum=1)
  shard_index = check_int("shard_index", shard_index, minimum=0, maximum=shard_count - 1)
  if num_epochs is not None:
    num_epochs = check_int("num_epochs", num_epochs, minimum=1)
  worker_count = check_int("worker_count", worker_count, minimum=0)
  if not isinstance(split, str):
    raise TypeError(f"split must be a str, got {type(split).__name__}")

  dataset_dir = find_dataset_dir(data_dir)
  builder = tfds.builder_from_directory(dataset_dir)
  if split not in builder.info.splits:
    raise ValueError(
      f"split {split!r} is not in {dataset_dir}; it has {sorted(builder.info.splits.keys())}"
    )
  missing = set(BATCH_KEYS) - set(builder.info.features.keys())
  if missing:
    raise ValueError(f"{dataset_dir} is not a multi-shot video dataset: no {sorted(missing)}")
  source = builder.as_data_source(split=split)
  if worker_count and not flags.FLAGS.is_parsed():
    # grain's worker processes read an absl flag, which raises in programs that never parsed
    # flags (anything not started through absl.app.run); the defaults are what we want.
    flags.FLAGS.mark_as_parsed()
  if len(source) // shard_count == 0:
    raise ValueError(
      f"split {split!r} has {len(source)} records, too few for shard_count={shard_count}"
    )

  shard_options = grain.sharding.ShardOptions(
    shard_index=shard_index, shard_count=shard_count, drop_remainder=True
  )
  sampler = grain.samplers.IndexSampler(
    num_records=len(source), shard_options=shard_options, shuffle=True, num_epochs=num_epochs,
    seed=seed,
  )
  loader = grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[
      _ToModelInputs(include_name),
      grain.transforms.Batch(batch_size=batch_size, drop_remainder=True),
    ],
    worker_count=worker_count,
    # grain's defaults (16 threads, 500 records ahead) suit small records; a video record is
    # large, so read only about two batches ahead.
    read_options=grain.ReadOptions(
      num_threads=_READ_THREADS, prefetch_buffer_size=max(2 * batch_size, _READ_THREADS)
    ),
  )
  return iter(loader)
