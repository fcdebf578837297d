"""Reads and validates a source folder's captions.jsonl, the index of its samples and shots.

One line per sample: `{"video": PATH, "shots": [{"start", "end", "caption"}, ...], "fps": R}`.
PATH is relative to the source folder. Shot ranges are frame indices, end exclusive, counted
at `fps` frames per second of the video's presentation time, or in the file's own frames when
"fps" is absent (exact for constant-frame-rate files only). A sample is its shots' frames, in
order; frames between shots (trimmed transitions, dropped shots) are left out. A long video
may give several lines, whose spans must not overlap. Other keys are kept for people and
ignored here. A malformed index is a bug in whatever produced it, so it fails the whole build
up front with the file and line; problems with the videos themselves are handled later, one
video at a time.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from moga_jax.errors import InputError

__all__ = ["INDEX_FILENAME", "PLACEHOLDER_CAPTION", "Shot", "VideoEntry", "read_index"]

INDEX_FILENAME = "captions.jsonl"
# What `python -m moga_jax.data.shots` writes for a shot nobody captioned; training refuses it
# unless config.data.allow_placeholder_captions says the user means it.
PLACEHOLDER_CAPTION = "<uncaptioned shot>"


class Shot(NamedTuple):
  start: int  # first frame, inclusive
  end: int  # last frame, exclusive
  caption: str


class VideoEntry(NamedTuple):
  """One sample: shots of one video (a video may hold several samples)."""

  video: str  # path relative to the source folder, with forward slashes
  shots: tuple[Shot, ...]
  fps: float | None = None  # the rate shot frames count at; None: the file's own frames
  name: str = ""  # unique per index: the video, then "#k" for its k-th sample when it has several

  def seconds(self, frame: int, native_fps: float) -> float:
    """The presentation time of shot frame index `frame`, given the file's average rate."""
    return frame / (self.fps or native_fps)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _parse_shot(raw, where: str) -> Shot:
  if not isinstance(raw, dict):
    raise InputError(f"{where}: each shot must be an object, got {type(raw).__name__}")
  missing = {"start", "end", "caption"} - raw.keys()
  if missing:
    raise InputError(f"{where}: shot is missing {sorted(missing)}")
  start, end, caption = raw["start"], raw["end"], raw["caption"]
  if not (_is_int(start) and _is_int(end) and 0 <= start < end):
    raise InputError(f"{where}: shot needs ints 0 <= start < end, got start={start!r} end={end!r}")
  if not isinstance(caption, str):
    raise InputError(f"{where}: shot caption must be a string, got {type(caption).__name__}")
  if "\0" in caption:
    raise InputError(f"{where}: shot caption contains a NUL character, the padding byte")
  return Shot(start, end, caption)


def _parse_line(line: str, where: str) -> VideoEntry:
  try:
    raw = json.loads(line)
  except json.JSONDecodeError as e:
    raise InputError(f"{where}: not valid JSON ({e.msg})") from e
  if not isinstance(raw, dict) or not isinstance(raw.get("video"), str) or not raw["video"]:
    raise InputError(f'{where}: needs an object with a non-empty string "video", got {line!r}')
  video = PurePosixPath(raw["video"].replace(os.sep, "/"))
  if video.is_absolute() or ".." in video.parts:
    raise InputError(f'{where}: "video" must be a path inside the source folder, got {video}')
  shots = raw.get("shots")
  if not isinstance(shots, list) or not shots:
    raise InputError(f'{where}: "shots" must be a non-empty list, got {shots!r}')
  parsed = tuple(_parse_shot(shot, where) for shot in shots)
  for before, after in itertools.pairwise(parsed):
    if after.start < before.end:
      raise InputError(f"{where}: shots must be in order and not overlap, got {before} {after}")
  fps = raw.get("fps")
  if fps is not None and (
    isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < float("inf")
  ):
    raise InputError(f'{where}: "fps" must be a positive number or absent, got {fps!r}')
  return VideoEntry(str(video), parsed, None if fps is None else float(fps))


def read_index(source_dir: str | os.PathLike) -> list[VideoEntry]:
  """Parses source_dir/captions.jsonl (blank lines allowed) into samples, in file order."""
  source_dir = Path(source_dir)
  path = source_dir / INDEX_FILENAME
  if not path.is_file():
    raise InputError(f"source_dir {source_dir} has no {INDEX_FILENAME}")
  entries, lines = [], []
  by_video: dict[str, list[int]] = {}
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      entry = _parse_line(line, f"{path}:{number}")
      by_video.setdefault(entry.video, []).append(len(entries))
      entries.append(entry)
      lines.append(number)
  if not entries:
    raise InputError(f"{path} lists no videos")
  for video, positions in by_video.items():
    if len(positions) == 1:
      entries[positions[0]] = entries[positions[0]]._replace(name=video)
      continue
    rates = {entries[i].fps for i in positions}
    if len(rates) > 1:
      where = f"{path}:{lines[positions[-1]]}"
      raise InputError(f"{where}: the samples of {video} count frames at different fps {rates}")
    spans = sorted((entries[i].shots[0].start, entries[i].shots[-1].end, i) for i in positions)
    for (_, end, i), (start, _, j) in itertools.pairwise(spans):
      if start < end:
        raise InputError(
          f"{path}:{lines[max(i, j)]}: this sample of {video} overlaps the one on line "
          f"{lines[min(i, j)]}"
        )
    for k, i in enumerate(positions):
      entries[i] = entries[i]._replace(name=f"{video}#{k}")
  return entries
