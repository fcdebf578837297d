"""TFDS builder: a folder of videos plus captions.jsonl -> fixed-shape array_record examples.

Each index line (a sample) becomes one example: its shots' frames, resampled to the config's
fps, resized preserving the aspect ratio by the config's fit (crop or pad), cut to num_frames.

Written to run without TensorFlow: features are plain `tfds.features.Tensor`s (Video and Image
features encode through TF), DatasetInfo is built directly (dataset_info_from_configs would look
for metadata files next to this module), and data is only ever read back through
`as_data_source`, never `as_dataset`. Videos that cannot be used are skipped with a warning and
listed in build_summary.json next to the data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from moga_jax.data.captions import encode_captions
from moga_jax.data.index import Shot, VideoEntry, read_index
from moga_jax.data.video_io import FIT_MODES, VideoReadError, probe_video, read_video
from moga_jax.errors import ConfigError, InputError
from pallas_kernels.common import check_int

__all__ = [
  "SUMMARY_FILENAME",
  "MultiShotConfig",
  "MultiShotVideos",
  "SkippedVideoWarning",
  "build_dataset",
  "make_example",
]

SUMMARY_FILENAME = "build_summary.json"
_log = logging.getLogger(__name__)


class SkippedVideoWarning(UserWarning):
  """A listed video was left out of the dataset (missing, corrupt, too short, ...)."""


@dataclasses.dataclass(eq=False)
class MultiShotConfig(tfds.core.BuilderConfig):
  """Shapes of the examples; the default name encodes them so variants live side by side.

  source_dir is deliberately not part of the name: it is where the data comes from, not what
  shape it has. build_dataset records it in the summary and refuses to reuse a dataset built
  from a different folder. fps 0 keeps the files' own frames (no resampling).
  """

  name: str = ""
  source_dir: str = ""
  num_frames: int = 16
  height: int = 32
  width: int = 32
  max_shots: int = 4
  caption_len: int = 64
  validation_fraction: float = 0.0
  fps: float = 0.0
  fit: str = "crop"

  def __post_init__(self):
    for field in ("num_frames", "height", "width", "max_shots", "caption_len"):
      setattr(self, field, check_int(field, getattr(self, field)))
    if not 0.0 <= self.validation_fraction < 1.0:
      raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
    if isinstance(self.fps, bool) or not isinstance(self.fps, int | float) or self.fps < 0:
      raise ConfigError(f"fps must be a number >= 0 (0: the files' own frames), got {self.fps!r}")
    if self.fit not in FIT_MODES:
      raise ConfigError(f"fit must be one of {FIT_MODES}, got {self.fit!r}")
    if not self.name:
      self.name = (
        f"f{self.num_frames}_{self.height}x{self.width}_s{self.max_shots}_l{self.caption_len}"
      )
      if self.fps:
        self.name += f"_fps{self.fps:g}".replace(".", "p")
      if self.fit != "crop":
        self.name += f"_{self.fit}"
      if self.validation_fraction:
        self.name += f"_val{round(self.validation_fraction * 1000):03d}"


class _Unusable(Exception):
  """A sample left out of the dataset: `kind` for counting, `reason` for a person."""

  def __init__(self, kind: str, reason: str):
    super().__init__(reason)
    self.kind, self.reason = kind, reason


def _plan_runs(
  entry: VideoEntry, native_fps: float, out_fps: float, num_frames: int
) -> tuple[list[tuple[float, int]], list[Shot]]:
  """Where to read and what the shots become, in output frames at out_fps.

  Returns ([(start seconds, frame count)] for each run of adjacent shots, the shots with bounds
  in the clip's frames). Shots past num_frames are left out, the last kept one is cut at it.
  Bounds are rounded from absolute times, so adjacent shots tile their run exactly.
  """
  runs: list[tuple[float, int]] = []
  shots: list[Shot] = []
  total, run_start, previous_end = 0, None, None
  for shot in entry.shots:
    if total >= num_frames:
      break
    first = round(entry.seconds(shot.start, native_fps) * out_fps)
    last = round(entry.seconds(shot.end, native_fps) * out_fps)
    count = min(last - first, num_frames - total)
    if count <= 0:
      continue  # shorter than one output frame
    if shot.start != previous_end:  # a gap (a dropped shot, a trimmed transition): a new run
      run_start = first
      runs.append((entry.seconds(shot.start, native_fps), 0))
    shots.append(Shot(total, total + count, shot.caption))
    runs[-1] = (runs[-1][0], first + count - run_start)
    total += count
    previous_end = shot.end
  return runs, shots


def make_example(
  frames: np.ndarray,
  shots: list[Shot],
  *,
  name: str,
  height: int,
  width: int,
  max_shots: int,
  caption_len: int,
) -> dict:
  """One record from a clip already read at its size [num_frames, height, width, 3] and its
  shots, whose bounds count the clip's frames."""
  if not 0 < len(shots) <= max_shots:
    raise ValueError(f"shots must hold 1..{max_shots} shots, got {len(shots)}")
  if frames.shape[1:] != (height, width, 3):
    raise ValueError(f"frames must be [F, {height}, {width}, 3], got {frames.shape}")
  bounds = np.zeros((max_shots, 2), np.int32)
  bounds[: len(shots)] = [(s.start, s.end) for s in shots]
  return {
    "video": frames,
    "captions": encode_captions([s.caption for s in shots], rows=max_shots, length=caption_len),
    "shot_bounds": bounds,
    "num_shots": np.int32(len(shots)),
    "name": name,
  }


def _validation_videos(entries: list[VideoEntry], fraction: float) -> set[str]:
  """A fixed subset of the videos chosen by a hash of the path, so it does not depend on the
  file order; every sample of a held-out video is held out with it (no leaks across splits)."""
  if not fraction:
    return set()
  videos = sorted({e.video for e in entries})
  count = max(1, round(fraction * len(videos)))
  if count >= len(videos):
    raise ConfigError(
      f"validation_fraction={fraction} leaves no training videos out of {len(videos)}"
    )
  ranked = sorted(videos, key=lambda v: (zlib.crc32(v.encode("utf-8")), v))
  return set(ranked[:count])


class MultiShotVideos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Multi-shot captioned videos as fixed-size uint8 clips; construct with a MultiShotConfig."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "First version: clip, resize, byte captions, shot bounds.",
    "1.1.0": "PyAV decoding: samples by shots, fps resampling, aspect-preserving fit.",
  }
  # tfds looks for a checksums file next to the builder's code through code_path, whose lookup
  # for a class outside tensorflow_datasets imports `importlib_resources` (not a dependency).
  # Nothing is downloaded, so there are no checksums to find.
  code_path = None

  def __init__(self, *, config: MultiShotConfig, data_dir: str | os.PathLike, **kwargs):
    if not isinstance(config, MultiShotConfig):
      raise TypeError(f"config must be a MultiShotConfig, got {type(config).__name__}")
    self.skipped: list[dict[str, str]] = []
    self.dropped_shots: list[str] = []
    super().__init__(config=config, data_dir=os.fspath(data_dir), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    # BYTES stores a tensor as one raw buffer instead of a list of int64s: far smaller for
    # uint8 video and decoded with a single np.frombuffer.
    raw = tfds.features.Encoding.BYTES
    return tfds.core.DatasetInfo(
      builder=self,
      description="Captioned multi-shot video clips (uint8 frames, UTF-8 caption bytes).",
      features=tfds.features.FeaturesDict(
        {
          "video": tfds.features.Tensor(
            shape=(c.num_frames, c.height, c.width, 3), dtype=np.uint8, encoding=raw
          ),
          "captions": tfds.features.Tensor(
            shape=(c.max_shots, c.caption_len), dtype=np.uint8, encoding=raw
          ),
          "shot_bounds": tfds.features.Tensor(shape=(c.max_shots, 2), dtype=np.int32),
          "num_shots": tfds.features.Tensor(shape=(), dtype=np.int32),
          "name": tfds.features.Tensor(shape=(), dtype=np.str_),
        }
      ),
      # Keep the index order on disk; readers shuffle with their own seed.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    c = self.builder_config
    if not c.source_dir:
      raise ConfigError("MultiShotConfig.source_dir must name the folder holding captions.jsonl")
    entries = read_index(c.source_dir)
    held_out = _validation_videos(entries, c.validation_fraction)
    splits = {"train": self._generate_examples([e for e in entries if e.video not in held_out])}
    if held_out:
      splits["validation"] = self._generate_examples([e for e in entries if e.video in held_out])
    return splits

  def _skip(self, name: str, kind: str, reason: str) -> None:
    self.skipped.append({"video": name, "kind": kind, "reason": reason})
    warnings.warn(f"skipping video {name}: {reason}", SkippedVideoWarning, stacklevel=1)

  def _read_sample(self, entry: VideoEntry) -> tuple[np.ndarray, list[Shot]]:
    """The sample's frames at the config's fps and size, and its shots; _Unusable if not."""
    c = self.builder_config
    path = Path(c.source_dir) / entry.video
    try:
      native = probe_video(path).fps
      out_fps = c.fps or native
      runs, shots = _plan_runs(entry, native, out_fps, c.num_frames)
      pieces = []
      for start_s, count in runs:
        piece = read_video(
          path,
          start_s=start_s,
          num_frames=count,
          fps=c.fps or None,
          size=(c.height, c.width),
          fit=c.fit,
        )
        pieces.append(piece)
        if len(piece) < count:
          break
    except VideoReadError as e:
      raise _Unusable(e.kind, e.reason) from e
    if not shots:
      raise _Unusable("no_shots", "no shot is one output frame long")
    frames = np.concatenate(pieces)
    if len(frames) < c.num_frames:
      rate = f" at {out_fps:g} fps" if c.fps else ""
      raise _Unusable(
        "too_short", f"too short: {len(frames)} frames{rate} < num_frames={c.num_frames}"
      )
    return frames, shots

  def _generate_examples(self, entries: list[VideoEntry]):
    c = self.builder_config
    for entry in entries:
      try:
        frames, shots = self._read_sample(entry)
      except _Unusable as e:
        self._skip(entry.name or entry.video, e.kind, e.reason)
        continue
      if len(shots) > c.max_shots:
        self.dropped_shots.append(entry.name or entry.video)
        warnings.warn(
          f"video {entry.name or entry.video}: keeping the first {c.max_shots} of "
          f"{len(shots)} shots",
          SkippedVideoWarning,
          stacklevel=1,
        )
        shots = shots[: c.max_shots]
      name = entry.name or entry.video
      yield (
        name,
        make_example(
          frames,
          shots,
          name=name,
          height=c.height,
          width=c.width,
          max_shots=c.max_shots,
          caption_len=c.caption_len,
        ),
      )

  def _download_and_prepare(self, dl_manager, download_config=None):
    self.skipped.clear()
    self.dropped_shots.clear()
    try:
      super()._download_and_prepare(dl_manager, download_config)
    except AssertionError as e:
      # tfds asserts when a split ends up empty; say which videos were the reason.
      if "No examples were yielded" not in str(e):
        raise
      raise InputError(
        f"no usable videos for a split of {self.builder_config.source_dir}: {e}; "
        f"skipped {len(self.skipped)}: {self.skipped}"
      ) from e
    summary = self._summary()
    # self.data_dir is still the temporary folder here, so the summary lands atomically.
    (Path(self.data_dir) / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=2) + "\n")
    names = [s["video"] for s in self.skipped]
    listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    detail = f" ({listed}; see {SUMMARY_FILENAME})" if names else ""
    level = logging.WARNING if names else logging.INFO
    _log.log(
      level,
      "built %s: %s examples, skipped %d videos%s",
      self.name,
      summary["examples"],
      len(names),
      detail,
    )

  def _summary(self) -> dict:
    c = self.builder_config
    examples = {name: split.num_examples for name, split in self.info.splits.items()}
    return {
      "source_dir": str(Path(c.source_dir).resolve()),
      "config": {
        "name": c.name,
        "num_frames": c.num_frames,
        "height": c.height,
        "width": c.width,
        "max_shots": c.max_shots,
        "caption_len": c.caption_len,
        "validation_fraction": c.validation_fraction,
        "fps": c.fps,
        "fit": c.fit,
      },
      "examples": examples,
      "num_examples": sum(examples.values()),
      "num_skipped": len(self.skipped),
      "skipped_by_kind": dict(sorted(Counter(s["kind"] for s in self.skipped).items())),
      "skipped": list(self.skipped),
      "videos_with_dropped_shots": list(self.dropped_shots),
    }


def build_dataset(
  source_dir: str | os.PathLike,
  data_dir: str | os.PathLike,
  *,
  num_frames: int,
  height: int,
  width: int,
  max_shots: int = 4,
  caption_len: int = 64,
  validation_fraction: float = 0.0,
  fps: float = 0.0,
  fit: str = "crop",
  overwrite: bool = False,
) -> dict:
  """Builds (or reuses) the array_record dataset and returns its build summary.

  The summary holds dataset_dir (pass it, or data_dir, to make_loader), examples per split,
  num_examples, num_skipped, skipped_by_kind, skipped ([{"video", "kind", "reason"}]) and
  reused. fps resamples every sample to that rate (0 keeps the files' frames); fit brings
  other aspect ratios to height x width ("crop", "pad" or "stretch"). An existing dataset
  with the same shapes is reused unless overwrite=True; one built from another source_dir is
  an error rather than silently stale data.
  """
  source_dir = Path(source_dir)
  if not source_dir.is_dir():
    raise InputError(f"source_dir must be an existing folder, got {source_dir}")
  config = MultiShotConfig(
    source_dir=str(source_dir),
    num_frames=num_frames,
    height=height,
    width=width,
    max_shots=max_shots,
    caption_len=caption_len,
    validation_fraction=validation_fraction,
    fps=fps,
    fit=fit,
  )
  builder = MultiShotVideos(config=config, data_dir=data_dir)
  dataset_dir = Path(builder.data_dir)
  reused = (dataset_dir / SUMMARY_FILENAME).is_file() and not overwrite
  if reused:
    summary = json.loads((dataset_dir / SUMMARY_FILENAME).read_text())
    if summary["source_dir"] != str(source_dir.resolve()):
      raise InputError(
        f"{dataset_dir} was built from {summary['source_dir']}, not {source_dir.resolve()}; "
        "pass overwrite=True or another data_dir"
      )
  if overwrite and dataset_dir.exists():
    # tfds cannot regenerate over a finished dataset in place (its DatasetInfo is already
    # initialised from the files); the old one goes and a fresh builder writes the new one.
    shutil.rmtree(dataset_dir)
    builder = MultiShotVideos(config=config, data_dir=data_dir)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  builder.download_and_prepare(
    file_format="array_record",
    download_config=tfds.download.DownloadConfig(try_download_gcs=False, download_mode=mode),
  )
  if not (dataset_dir / SUMMARY_FILENAME).is_file():
    raise InputError(
      f"{dataset_dir} holds a dataset without {SUMMARY_FILENAME} (not built by build_dataset); "
      "pass overwrite=True or another data_dir"
    )
  summary = json.loads((dataset_dir / SUMMARY_FILENAME).read_text())
  return {**summary, "dataset_dir": str(dataset_dir), "reused": reused}
