"""Shots from long videos: detect cuts, merge adjacent shots into training samples, write the index.

    python -m moga_jax.data.shots --videos DIR --out SOURCE_DIR [--captions FILE] [--config C]
    python -m moga_jax.data.shots --videos DIR --list > shots.jsonl   # to caption them

The paper's recipe (Sec. 3.3) in small: shot boundaries from PySceneDetect (content or adaptive
detector, decoded with PyAV), a few frames trimmed on each side of a gradual transition, shots
shorter than a minimum dropped, and adjacent shots merged into samples of the config's clip
length (num_frames at data.fps), several per long video, never overlapping.

SOURCE_DIR gets `captions.jsonl`, one sample per line (shot ranges in frames at data.fps, the
format `moga_jax.data.index` reads), `videos`, a symlink to DIR (nothing is copied: the index
points at the original files through it), and `shots_summary.json`. Shots without a caption in
--captions get PLACEHOLDER_CAPTION, which training refuses unless
`--config.data.allow_placeholder_captions=True`.

A transition counts as gradual when the detector's frame score stays above
`gradual_fraction` x its threshold on a frame next to the cut (a hard cut is one frame of
change between two calm frames); only then are `trim_frames` frames dropped on each side.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from moga_jax.data.index import INDEX_FILENAME, PLACEHOLDER_CAPTION
from moga_jax.data.video_io import VideoReadError, probe_video
from moga_jax.errors import InputError
from moga_jax.train.config_files import config_path
from pallas_kernels.common import check_positive_int

__all__ = [
  "VIDEO_SUFFIXES",
  "DetectedShots",
  "Sample",
  "assign_captions",
  "detect_shots",
  "find_videos",
  "merge_shots",
  "trim_gradual",
  "write_source",
]

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
SUMMARY_FILENAME = "shots_summary.json"
DETECTORS = ("content", "adaptive")


class SkippedVideoWarning(UserWarning):
  """A video under --videos could not be read; it is left out and counted in the summary."""


@dataclasses.dataclass(frozen=True)
class DetectedShots:
  """The shots of one video in its own frames (end exclusive) and the detector's frame scores."""

  fps: float  # the video's average frame rate
  shots: tuple[tuple[int, int], ...]
  scores: np.ndarray  # float [num_frames]: change from the previous frame (0 for the first)


@dataclasses.dataclass(frozen=True)
class Sample:
  """Adjacent shots forming one training sample; ranges in frames at the output fps."""

  shot_ids: tuple[int, ...]  # indices into the detected shots
  ranges: tuple[tuple[int, int], ...]  # [start, end) per shot; the last may be cut


def find_videos(root: Path) -> list[Path]:
  """Video files under root (by suffix, any depth), sorted, so runs are reproducible."""
  return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def detect_shots(
  path: str | os.PathLike,
  *,
  detector: str = "content",
  threshold: float = 27.0,
  adaptive_threshold: float = 3.0,
  min_content_val: float = 15.0,
  min_scene_s: float = 0.5,
) -> DetectedShots:
  """Shot boundaries of one video with PySceneDetect, decoding with PyAV.

  content: a cut where the frame-to-frame change (HSV and edges, PySceneDetect's content_val)
  exceeds `threshold`. adaptive: where it exceeds `adaptive_threshold` times its rolling mean
  and `min_content_val`, which copes with fast camera motion. No two cuts closer than
  min_scene_s. Raises VideoReadError for a file it cannot read.
  """
  try:
    import scenedetect  # a dependency of this command only (it imports OpenCV)
  except ImportError as e:
    raise ImportError(
      "shot detection needs PySceneDetect: pip install 'moga-jax[shots]' (or scenedetect)",
      name="scenedetect",  # the command line turns it into one line (moga_jax.cli)
    ) from e

  if detector not in DETECTORS:
    raise InputError(f"detector must be one of {DETECTORS}, got {detector!r}")
  info = probe_video(path)  # VideoReadError with a reason for missing, corrupt, audio-only
  min_len = max(1, round(min_scene_s * info.fps))
  if detector == "content":
    found = scenedetect.ContentDetector(threshold=threshold, min_scene_len=min_len)
  else:
    found = scenedetect.AdaptiveDetector(
      adaptive_threshold=adaptive_threshold, min_content_val=min_content_val, min_scene_len=min_len
    )
  try:
    video = scenedetect.open_video(os.fspath(path), backend="pyav")
    manager = scenedetect.SceneManager(scenedetect.StatsManager())
    manager.add_detector(found)
    manager.detect_scenes(video)
  except Exception as e:  # the library raises many types for bad files
    raise VideoReadError(path, f"shot detection failed: {e}") from e
  scenes = manager.get_scene_list(start_in_scene=True)
  if not scenes:
    raise VideoReadError(path, "no decodable frames", "no_frames")
  shots = tuple((int(a.frame_num), int(b.frame_num)) for a, b in scenes)
  stats = manager.stats_manager
  scores = np.zeros(shots[-1][1], np.float32)
  for i in range(1, len(scores)):
    (value,) = stats.get_metrics(i, ["content_val"])
    scores[i] = 0.0 if value is None else float(value)
  return DetectedShots(info.fps, shots, scores)


def trim_gradual(
  shots: Sequence[tuple[int, int]], scores: np.ndarray, *, trim_frames: int, gradual_score: float
) -> list[tuple[int, int]]:
  """Drops trim_frames frames on each side of every gradual boundary; hard cuts are kept.

  A boundary b (the first frame of the next shot, whose score holds the cut) is gradual when a
  frame beside it, b - 1 or b + 1, also scores >= gradual_score: the picture was already, or
  still, changing. A shot trimmed to nothing keeps its frames (it is then dropped as too short).
  """
  if isinstance(trim_frames, bool) or not isinstance(trim_frames, int) or trim_frames < 0:
    raise InputError(f"trim_frames must be an int >= 0, got {trim_frames!r}")
  out = [list(s) for s in shots]
  for i in range(len(shots) - 1):
    b = shots[i][1]
    beside = [scores[j] for j in (b - 1, b + 1) if 0 < j < len(scores)]
    if trim_frames and beside and max(beside) >= gradual_score:
      out[i][1] = max(out[i][0] + 1, out[i][1] - trim_frames)
      out[i + 1][0] = min(out[i + 1][1] - 1, out[i + 1][0] + trim_frames)
  return [tuple(s) for s in out]


def merge_shots(
  shots: Sequence[tuple[int, int]],
  *,
  fps_in: float,
  fps_out: float,
  num_frames: int,
  max_shots: int,
  min_shot_s: float,
) -> list[Sample]:
  """Greedy shot merge: runs of adjacent shots that fill num_frames frames at fps_out.

  Shots shorter than min_shot_s are dropped, and a dropped shot ends a run (a sample never
  jumps over a missing shot). A sample starts at a shot, takes the next shots while it holds
  fewer than num_frames frames and at most max_shots shots, and cuts its last shot so it holds
  exactly num_frames; the next sample starts at the shot after. Samples never overlap.
  """
  num_frames = check_positive_int("num_frames", num_frames)
  max_shots = check_positive_int("max_shots", max_shots)
  for name, value in (("fps_in", fps_in), ("fps_out", fps_out)):
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
      raise InputError(f"{name} must be a positive number, got {value!r}")
  if not min_shot_s >= 0:
    raise InputError(f"min_shot_s must be >= 0, got {min_shot_s!r}")
  ranges = [(round(s / fps_in * fps_out), round(e / fps_in * fps_out)) for s, e in shots]
  keep = [
    (e - s) / fps_in >= min_shot_s and b - a > 0
    for (s, e), (a, b) in zip(shots, ranges, strict=True)
  ]
  samples: list[Sample] = []
  i = 0
  while i < len(shots):
    if not keep[i]:
      i += 1
      continue
    ids, parts, total = [], [], 0
    j = i
    while j < len(shots) and keep[j] and len(ids) < max_shots and total < num_frames:
      a, b = ranges[j]
      take = min(b - a, num_frames - total)
      ids.append(j)
      parts.append((a, a + take))
      total += take
      j += 1
    if total == num_frames:
      samples.append(Sample(tuple(ids), tuple(parts)))
      i = j
    else:
      i += 1  # too short from here: try starting at the next shot
  return samples


def _read_captions(path: Path) -> list[dict]:
  rows = []
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg})") from e
      if not isinstance(row, dict) or not isinstance(row.get("video"), str):
        raise InputError(f'{where}: needs an object with a string "video"')
      if not isinstance(row.get("caption"), str) or not row["caption"].strip():
        raise InputError(f'{where}: needs a non-empty string "caption"')
      by_shot = isinstance(row.get("shot"), int) and not isinstance(row["shot"], bool)
      by_range = all(isinstance(row.get(k), int) for k in ("start", "end"))
      if by_shot == by_range:
        raise InputError(f'{where}: give either "shot" (an index) or "start" and "end" (frames)')
      if by_range and not 0 <= row["start"] < row["end"]:
        raise InputError(f"{where}: needs 0 <= start < end, got {row['start']}, {row['end']}")
      rows.append(row)
  return rows


def assign_captions(
  rows: Sequence[dict], video: str, shots: Sequence[tuple[int, int]]
) -> list[str | None]:
  """Each detected shot's caption from rows for this video (None where there is none).

  A row names its shot by index ("shot") or by a frame range of the source video ("start",
  "end"), which goes to the detected shot it overlaps most.
  """
  captions: list[str | None] = [None] * len(shots)
  for row in rows:
    if row["video"].replace(os.sep, "/") != video:
      continue
    if "shot" in row:
      index = row["shot"]
    else:
      overlap = [min(e, row["end"]) - max(s, row["start"]) for s, e in shots]
      index = int(np.argmax(overlap)) if max(overlap, default=0) > 0 else -1
    if 0 <= index < len(shots):
      captions[index] = row["caption"]
    else:
      warnings.warn(f"caption for {video} matches no detected shot: {row}", stacklevel=2)
  return captions


def _link_videos(out: Path, videos: Path) -> None:
  """out/videos -> videos, so the index's paths stay inside out and nothing is copied."""
  link = out / "videos"
  target = videos.resolve()
  if link.is_symlink() and link.resolve() == target:
    return
  if link.exists() or link.is_symlink():
    raise InputError(f"{link} exists and is not a link to {target}; choose another --out")
  link.symlink_to(target, target_is_directory=True)


def write_source(
  videos: Path,
  out: Path,
  *,
  fps: float,
  num_frames: int,
  max_shots: int,
  captions: Sequence[dict] = (),
  detect: dict | None = None,
  trim_frames: int = 2,
  gradual_fraction: float = 0.3,
  min_shot_s: float = 1.0,
  progress: bool = True,
) -> dict:
  """Detects, trims and merges the shots of every video under `videos` into out/captions.jsonl;
  returns the summary it also writes to out/shots_summary.json."""
  from tqdm import tqdm

  detect = dict(detect or {})
  files = find_videos(videos)
  if not files:
    raise InputError(f"--videos {videos} holds no video files ({', '.join(VIDEO_SUFFIXES)})")
  out.mkdir(parents=True, exist_ok=True)
  _link_videos(out, videos)
  threshold = (
    detect.get("threshold", 27.0)
    if detect.get("detector", "content") == "content"
    else detect.get("min_content_val", 15.0)
  )
  lines, skipped = [], []
  counts = {"shots": 0, "shots_too_short": 0, "samples": 0, "placeholder_captions": 0}
  for path in tqdm(files, desc="shots", unit="video", disable=not progress):
    relative = path.relative_to(videos).as_posix()
    try:
      found = detect_shots(path, **detect)
    except VideoReadError as e:
      skipped.append({"video": relative, "kind": e.kind, "reason": e.reason})
      warnings.warn(f"skipping video {relative}: {e.reason}", SkippedVideoWarning, stacklevel=2)
      continue
    shots = trim_gradual(
      found.shots, found.scores, trim_frames=trim_frames, gradual_score=gradual_fraction * threshold
    )
    samples = merge_shots(
      shots,
      fps_in=found.fps,
      fps_out=fps,
      num_frames=num_frames,
      max_shots=max_shots,
      min_shot_s=min_shot_s,
    )
    texts = assign_captions(captions, relative, found.shots)
    counts["shots"] += len(shots)
    counts["shots_too_short"] += sum((e - s) / found.fps < min_shot_s for s, e in shots)
    for sample in samples:
      caption = [texts[i] or PLACEHOLDER_CAPTION for i in sample.shot_ids]
      counts["placeholder_captions"] += sum(texts[i] is None for i in sample.shot_ids)
      first, last = sample.ranges[0][0], sample.ranges[-1][1]
      lines.append(
        {
          "video": f"videos/{relative}",
          "fps": fps,
          "shots": [
            {"start": a, "end": b, "caption": c}
            for (a, b), c in zip(sample.ranges, caption, strict=True)
          ],
          "source_shots": list(sample.shot_ids),
          "seconds": [round(first / fps, 3), round(last / fps, 3)],
        }
      )
    counts["samples"] += len(samples)
  if not lines:
    raise InputError(
      f"no sample of {num_frames} frames at {fps:g} fps came out of {len(files)} videos "
      f"({len(skipped)} unreadable); lower --min_shot_seconds or use a config with shorter clips"
    )
  index = out / INDEX_FILENAME
  partial = index.with_suffix(".jsonl.partial")
  partial.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
  partial.replace(index)  # a crash never leaves a half-written index
  summary = {
    "videos_dir": str(videos.resolve()),
    "videos": len(files),
    "skipped": skipped,
    "num_skipped": len(skipped),
    **counts,
    "clip": {"num_frames": num_frames, "fps": fps, "max_shots": max_shots},
    "detector": detect or {"detector": "content"},
    "trim_frames": trim_frames,
    "gradual_fraction": gradual_fraction,
    "min_shot_seconds": min_shot_s,
  }
  (out / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=2) + "\n")
  return summary


# --- command line ---------------------------------------------------------------------------------


def _define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags, defined only when it runs: importing this module (the library) must
  not claim flag names like --config that the programs importing it define themselves (and a
  test runs it in-process with its own FlagValues)."""
  fv = flag_values
  flags.DEFINE_string("videos", None, "Folder of videos (searched recursively).", flag_values=fv)
  flags.DEFINE_string(
    "out", None, "Source folder to write (captions.jsonl, videos link).", flag_values=fv
  )
  flags.DEFINE_string(
    "captions",
    None,
    'JSONL of {"video", "shot", "caption"} or {"video", "start", "end", ...}.',
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "list", False, "Print the detected shots as JSON lines and stop.", flag_values=fv
  )
  flags.DEFINE_enum("detector", "content", DETECTORS, "PySceneDetect detector.", flag_values=fv)
  flags.DEFINE_float("threshold", 27.0, "content: cut above this frame change.", flag_values=fv)
  flags.DEFINE_float(
    "adaptive_threshold", 3.0, "adaptive: ratio to the rolling mean.", flag_values=fv
  )
  flags.DEFINE_float("min_content_val", 15.0, "adaptive: least change for a cut.", flag_values=fv)
  flags.DEFINE_float("min_scene_seconds", 0.5, "No two cuts closer than this.", flag_values=fv)
  flags.DEFINE_float(
    "min_shot_seconds", 1.0, "Shots shorter than this are dropped.", flag_values=fv
  )
  flags.DEFINE_integer(
    "trim_frames", 2, "Frames dropped each side of a gradual transition.", flag_values=fv
  )
  flags.DEFINE_float(
    "gradual_fraction",
    0.3,
    "A cut is gradual when a frame beside it scores this x the threshold.",
    flag_values=fv,
  )
  config_flags.DEFINE_config_file(
    "config",
    config_path("tiny"),
    "Config whose data section sets clip length, fps, max shots.",
    flag_values=fv,
  )


def _detect_options(f) -> dict:
  options = {"detector": f.detector, "min_scene_s": f.min_scene_seconds}
  if f.detector == "content":
    options["threshold"] = f.threshold
  else:
    options |= {"adaptive_threshold": f.adaptive_threshold, "min_content_val": f.min_content_val}
  return options


def main(argv, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  del argv
  f = flag_values
  if f.videos is None:
    raise app.UsageError("give --videos, a folder of videos")
  videos = Path(f.videos)
  if not videos.is_dir():
    raise app.UsageError(f"--videos {videos} is not a folder")
  files = find_videos(videos)
  if not files:  # --list too: an empty listing would pass for a folder without cuts
    raise InputError(f"--videos {videos} holds no video files ({', '.join(VIDEO_SUFFIXES)})")
  if importlib.util.find_spec("scenedetect") is None:  # before any video is decoded
    raise ImportError("scenedetect is not installed", name="scenedetect")
  if f.list:
    for path in files:
      relative = path.relative_to(videos).as_posix()
      try:
        found = detect_shots(path, **_detect_options(f))
      except VideoReadError as e:
        print(f"skipping video {relative}: {e.reason}", file=sys.stderr)
        continue
      for i, (start, end) in enumerate(found.shots):
        seconds = [round(start / found.fps, 3), round(end / found.fps, 3)]
        row = {"video": relative, "shot": i, "start": start, "end": end, "seconds": seconds}
        print(json.dumps(row), flush=True)
    return
  if f.out is None:
    raise app.UsageError("give --out, the source folder to write (or --list)")
  data = f.config.data
  summary = write_source(
    videos,
    Path(f.out),
    fps=float(data.fps),
    num_frames=int(data.get("num_frames") or data.shots * data.frames_per_shot),
    max_shots=int(data.max_shots),
    captions=_read_captions(Path(f.captions)) if f.captions else (),
    detect=_detect_options(f),
    trim_frames=f.trim_frames,
    gradual_fraction=f.gradual_fraction,
    min_shot_s=f.min_shot_seconds,
  )
  print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, indent=2))
  if summary["placeholder_captions"]:
    print(
      f"{summary['placeholder_captions']} shots have no caption ({PLACEHOLDER_CAPTION!r}); "
      "train.py refuses them unless --config.data.allow_placeholder_captions=True",
      file=sys.stderr,
    )


if __name__ == "__main__":
  from moga_jax.train.run_guard import cli_main

  _define_flags()
  app.run(cli_main(main, "moga_jax.data.shots"))
