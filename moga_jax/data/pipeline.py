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

from moga_jax.data import video_io
from moga_jax.errors import InputError
from pallas_kernels.common import check_int

__all__ = ["BATCH_KEYS", "LATENT_KEYS", "find_dataset_dir", "make_loader"]

BATCH_KEYS = ("video", "captions", "shot_bounds", "num_shots")
# Precomputed Wan inputs (moga_jax.wan.latent_data).
LATENT_KEYS = ("latents", "context", "frame_shot")
NULL_CONTEXT = "null_context.npy"
_INFO_FILENAME = "dataset_info.json"
_READ_THREADS = 4


def find_dataset_dir(data_dir: str | os.PathLike) -> Path:
  """The prepared dataset folder: data_dir itself, or the only one below it.

  Accepts the version folder (.../multi_shot_videos/<config>/1.0.0, as returned in
  build_dataset's summary) or the data_dir given to build_dataset when it holds one dataset.
  """
  data_dir = Path(data_dir)
  if not data_dir.is_dir():
    raise InputError(f"data_dir {data_dir} is not a folder; run build_dataset first")
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
    raise InputError(
      f"data_dir {data_dir} holds no prepared dataset (no {_INFO_FILENAME} in it or in "
      "<name>/<config>/<version>/ below it); run build_dataset first"
    )
  if len(found) > 1:
    listing = ", ".join(str(p) for p in found)
    raise InputError(f"data_dir {data_dir} holds {len(found)} datasets, pass one of: {listing}")
  return found[0]


class _ToModelInputs(grain.transforms.Map):
  """uint8 video -> float32 in [-1, 1]; fixes dtypes so batches stack into plain arrays."""

  def __init__(self, include_name: bool):
    self._include_name = include_name

  def map(self, features: dict) -> dict:
    out = {
      "video": video_io.pixels_to_unit(features["video"]),
      "captions": np.asarray(features["captions"], np.uint8),
      "shot_bounds": np.asarray(features["shot_bounds"], np.int32),
      "num_shots": np.asarray(features["num_shots"], np.int32),
    }
    if self._include_name:
      out["name"] = np.bytes_(features["name"])
    return out


class _ToLatentInputs(grain.transforms.Map):
  """float16 latents and caption states -> float32, the all-True caption mask Wan attends with
  (its padding is zero states), and the empty caption's states for caption dropout."""

  def __init__(self, null_context: np.ndarray, include_name: bool):
    self._null = np.asarray(null_context, np.float32)
    self._include_name = include_name

  def map(self, features: dict) -> dict:
    context = np.asarray(features["context"], np.float32)
    out = {
      "latents": np.asarray(features["latents"], np.float32),
      "context": context,
      "context_mask": np.ones(context.shape[:2], bool),
      "frame_shot": np.asarray(features["frame_shot"], np.int32),
      "null_context": self._null,
    }
    if self._include_name:
      out["name"] = np.bytes_(features["name"])
    return out


class _ShardRecord(grain.transforms.Map):
  """Local record j -> the record at its place in this process's rows of the global batch."""

  def __init__(self, records, batch_size: int, shard_index: int, shard_count: int):
    self._records, self._batch = records, batch_size
    self._offset, self._stride = shard_index * batch_size, shard_count * batch_size

  def map(self, j: int):
    step, row = divmod(int(j), self._batch)
    return self._records[step * self._stride + self._offset + row]


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
) -> grain.DatasetIterator:
  """Iterator of batches: dicts of numpy arrays, forever if num_epochs is None.

  From a video dataset (moga_jax.data.builder): video float32 [B, F, H, W, 3] in [-1, 1];
  captions uint8 [B, S, L]; shot_bounds int32 [B, S, 2]; num_shots int32 [B]. From a latent
  dataset (moga_jax.wan.latent_data): latents float32 [B, F', h, w, C]; context float32
  [B, S, L, D]; context_mask bool [B, S, L]; frame_shot int32 [B, F']; null_context float32
  [B, L, D]. With include_name also name bytes [B] (debugging only: it cannot go to a device).

  Sharding for multi-process training: the records are shuffled by seed (afresh every epoch)
  into one global order, cut into global batches of batch_size * shard_count records, and
  process shard_index reads rows [shard_index * batch_size, (shard_index + 1) * batch_size) of
  each. So every process reads only its own records, all take the same number of steps, and
  the global batches are the same whatever the number of processes: a 2-process run sees what
  a 1-process run with the global batch sees. Batches never mix in a partial batch; they may
  span an epoch boundary.

  The iterator's get_state() (a JSON-able dict) and set_state() resume exactly: restoring the
  state taken after k batches into a loader made with the same arguments yields batch k + 1
  next. worker_count > 0 decodes in that many child processes; a state only restores into a
  loader with the same worker_count.
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
    raise InputError(
      f"split {split!r} is not in {dataset_dir}; it has {sorted(builder.info.splits.keys())}"
    )
  features = set(builder.info.features.keys())
  if set(LATENT_KEYS) <= features:
    to_inputs = _ToLatentInputs(np.load(dataset_dir / NULL_CONTEXT), include_name)
  elif set(BATCH_KEYS) <= features:
    to_inputs = _ToModelInputs(include_name)
  else:
    raise InputError(
      f"{dataset_dir} is neither a multi-shot video dataset (features "
      f"{BATCH_KEYS}) nor a latent one ({LATENT_KEYS}): it has {sorted(features)}"
    )
  source = builder.as_data_source(split=split)
  if worker_count and not flags.FLAGS.is_parsed():
    # grain's worker processes read an absl flag, which raises in programs that never parsed
    # flags (anything not started through absl.app.run); the defaults are what we want.
    flags.FLAGS.mark_as_parsed()
  global_batch = batch_size * shard_count
  if len(source) < global_batch:
    raise InputError(
      f"split {split!r} has {len(source)} records, too few for one global batch of "
      f"batch_size x shard_count = {batch_size} x {shard_count}"
    )

  records = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
  steps = len(records) // global_batch  # whole global batches only: all processes stop together
  mine = grain.MapDataset.range(steps * batch_size).map(
    _ShardRecord(records, batch_size, shard_index, shard_count)
  )
  # grain's defaults (16 threads, 500 records ahead) suit small records; a video record is
  # large, so read only about two batches ahead.
  dataset = mine.map(to_inputs).to_iter_dataset(
    grain.ReadOptions(
      num_threads=_READ_THREADS, prefetch_buffer_size=max(2 * batch_size, _READ_THREADS)
    )
  )
  dataset = dataset.batch(batch_size, drop_remainder=True)
  if worker_count:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(dataset)
