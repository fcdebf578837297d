"""Reads and validates a source folder's captions.jsonl, the index of its videos and shots.

A malformed index is a bug in whatever produced it, so it fails the whole build up front with
the file and line; problems with the videos themselves are handled later, one video at a time.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path, PurePosixPath
from typing import NamedTuple

__all__ = ["INDEX_FILENAME", "Shot", "VideoEntry", "read_index"]

INDEX_FILENAME = "captions.jsonl"


class Shot(NamedTuple):
  start: int  # first frame, inclusive
  end: int  # last frame, exclusive
  caption: str


class VideoEntry(NamedTuple):
  video: str  # path relative to the source folder, with forward slashes
  shots: tuple[Shot, ...]


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _parse_shot(raw, where: str) -> Shot:
  if not isinstance(raw, dict):
    raise ValueError(f"{where}: each shot must be an object, got {type(raw).__name__}")
  missing = {"start", "end", "caption"} - raw.keys()
  if missing:
    raise ValueError(f"{where}: shot is missing {sorted(missing)}")
  start, end, caption = raw["start"], raw["end"], raw["caption"]
  if not (_is_int(start) and _is_int(end) and 0 <= start < end):
    raise ValueError(f"{where}: shot needs ints 0 <= start < end, got start={start!r} end={end!r}")
  if not isinstance(caption, str):
    raise ValueError(f"{where}: shot caption must be a string, got {type(caption).__name__}")
  if "\0" in caption:
    raise ValueError(f"{where}: shot caption contains a NUL character, the padding byte")
  return Shot(start, end, caption)


def _parse_line(line: str, where: str) -> VideoEntry:
  try:
    raw = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
  if not isinstance(raw, dict) or not isinstance(raw.get("video"), str) or not raw["video"]:
    raise ValueError(f'{where}: needs an object with a non-empty string "video", got {line!r}')
  video = PurePosixPath(raw["video"].replace(os.sep, "/"))
  if video.is_absolute() or ".." in video.parts:
    raise ValueError(f'{where}: "video" must be a path inside the source folder, got {video}')
  shots = raw.get("shots")
  if not isinstance(shots, list) or not shots:
    raise ValueError(f'{where}: "shots" must be a non-empty list, got {shots!r}')
  parsed = tuple(_parse_shot(shot, where) for shot in shots)
  for before, after in itertools.pairwise(parsed):
    if after.start < before.end:
      raise ValueError(f"{where}: shots must be in order and not overlap, got {before} {after}")
  return VideoEntry(str(video), parsed)


def read_index(source_dir: str | os.PathLike) -> list[VideoEntry]:
  """Parses source_dir/captions.jsonl (blank lines allowed) into entries, in file order."""
  source_dir = Path(source_dir)
  path = source_dir / INDEX_FILENAME
  if not path.is_file():
    raise ValueError(f"source_dir {source_dir} has no {INDEX_FILENAME}")
  entries, seen = [], {}
  with path.open(encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      entry = _parse_line(line, where)
      if entry.video in seen:
        first = seen[entry.video]
        raise ValueError(f"{where}: video {entry.video} is already listed on line {first}")
      seen[entry.video] = number
      entries.append(entry)
  if not entries:
    raise ValueError(f"{path} lists no videos")
  return entries
