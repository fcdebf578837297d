"""Multi-shot clips in which the subject persists across cuts without being named again.

The first shot's caption names the subject ("a red circle moving right on a blue background");
later shots cut to a new background colour, a new motion direction and so a new position, and
their captions only say "the same object, now moving left on a green background". Since every
shot is conditioned on its own caption only, a model can draw the right subject in a later shot
only by attending across the cut to the earlier shots: the cross-shot consistency the MoGA paper
credits to its routed attention.

With probability `change_rate` per clip, one later shot swaps the subject on purpose and says so
("a different object, a yellow square, moving up on a cyan background"); the shots after it say
"the same object, ..." about the new subject. The new subject differs from the old one in colour
AND shape, so copying the first subject is not always right.

Besides the mp4s and captions.jsonl (the format of synthetic.py, read by train.py), a set holds
subjects.jsonl (what each shot's caption implies: background, subject colour and shape,
direction, whether the subject changed at that shot) and masks/*.npz (the subject's pixels),
which moga_jax.reproduction.eval.consistency scores generated videos against.
"""

from __future__ import annotations

import itertools
import json
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from moga_jax.data.synthetic import (
  COLOURS,
  DIRECTIONS,
  SHAPES,
  SUBJECT_SCALE,
  _caption,
  _render_shot,
  check_subject_scale,
)
from moga_jax.data.video_io import write_mp4
from moga_jax.errors import InputError
from pallas_kernels.common import check_int

__all__ = [
  "CAPTION_LEN",
  "caption_shots",
  "held_out_captions",
  "make_consistency_videos",
  "read_mask",
  "read_subjects",
  "render_clip",
]

SUBJECTS_FILENAME = "subjects.jsonl"
# A different entropy tuple from make_consistency_videos' (seed, index), so held-out caption
# sets never replay a training clip's random stream, whatever seeds the caller picks.
_HELD_OUT_STREAM = 0x4E1D


def _caption_for(shot: dict, *, first: bool) -> str:
  if first:
    return _caption(shot)
  if shot["changed"]:
    return (
      f"a different object, a {shot['colour']} {shot['shape']}, moving {shot['direction']} "
      f"on a {shot['background']} background"
    )
  return f"the same object, now moving {shot['direction']} on a {shot['background']} background"


def caption_shots(shots: Sequence[dict]) -> list[str]:
  """The captions a clip's shot descriptions imply (the first names the subject, later don't)."""
  return [_caption_for(shot, first=i == 0) for i, shot in enumerate(shots)]


def _longest_caption() -> int:
  names = list(COLOURS)
  longest = 0
  for c, s, d, b in itertools.product(names, SHAPES, DIRECTIONS, names):
    if b == c:
      continue
    shot = dict(colour=c, shape=s, direction=d, background=b, changed=True)
    for first, changed in ((True, False), (False, True), (False, False)):
      longest = max(longest, len(_caption_for({**shot, "changed": changed}, first=first)))
  return longest


# Longest caption in bytes (ASCII): set config.data.caption_len to at least this, or the
# background of a "different object" shot gets truncated away.
CAPTION_LEN: int = _longest_caption()


def _describe_clip(rng: np.random.Generator, shots: int, change_rate: float) -> list[dict]:
  """Shot descriptions for one clip (no frame ranges yet).

  Every draw happens whatever change_rate is, so change_rate only decides which clips change
  their subject: the clips that do not are the same for every change_rate.
  """
  names = list(COLOURS)
  colour = str(rng.choice(names))
  shape = str(rng.choice(SHAPES))
  change_draw = float(rng.random())
  change_at = int(rng.integers(1, shots))
  new_colour = str(rng.choice([c for c in names if c != colour]))
  new_shape = str(rng.choice([s for s in SHAPES if s != shape]))
  if change_draw >= change_rate:
    change_at = None
  described, previous_bg, previous_dir = [], None, None
  for i in range(shots):
    changed = i == change_at
    if changed:
      colour, shape = new_colour, new_shape
    background = str(rng.choice([c for c in names if c not in (previous_bg, colour)]))
    direction = str(rng.choice([d for d in DIRECTIONS if d != previous_dir]))
    described.append(
      dict(background=background, colour=colour, shape=shape, direction=direction, changed=changed)
    )
    previous_bg, previous_dir = background, direction
  return described


def _with_frames(described: list[dict], frames_per_shot: int) -> list[dict]:
  captions = caption_shots(described)
  return [
    {"start": i * frames_per_shot, "end": (i + 1) * frames_per_shot, "caption": caption, **shot}
    for i, (shot, caption) in enumerate(zip(described, captions, strict=True))
  ]


def render_clip(
  shots: Sequence[dict],
  *,
  height: int = 32,
  width: int = 32,
  rng: np.random.Generator | int = 0,
  subject_scale: float = SUBJECT_SCALE,
) -> tuple[np.ndarray, np.ndarray]:
  """Renders shot descriptions into (video uint8 [F, H, W, 3], subject mask bool [F, H, W]).

  `shots` are dicts with start, end (contiguous from 0), background, colour, shape and
  direction, as in subjects.jsonl or held_out_captions(). Each shot draws its shape with
  synthetic.py's renderer; the mask is every pixel that is not the flat background.
  """
  if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
    rng = np.random.default_rng(int(rng))
  if not isinstance(rng, np.random.Generator):
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")
  shots = _check_shot_specs(shots)
  subject_scale = check_subject_scale(subject_scale)
  clips, masks = [], []
  for shot in shots:
    clip = _render_shot(rng, shot, shot["end"] - shot["start"], height, width, subject_scale)
    clips.append(clip)
    masks.append(np.any(clip != np.asarray(COLOURS[shot["background"]], np.uint8), axis=-1))
  return np.concatenate(clips), np.concatenate(masks)


def _check_shot_specs(shots) -> list[dict]:
  if isinstance(shots, dict) and "shots" in shots:
    shots = shots["shots"]
  shots = list(shots)
  if not shots:
    raise ValueError("shots must hold at least one shot description")
  expected_start = 0
  for i, shot in enumerate(shots):
    missing = {"start", "end", "background", "colour", "shape", "direction"} - set(shot)
    if missing:
      raise ValueError(f"shots[{i}] is missing {sorted(missing)}")
    if shot["start"] != expected_start or not shot["end"] > shot["start"]:
      raise ValueError(
        f"shots[{i}] must start at frame {expected_start} (shots are contiguous) "
        f"and end after it, got start={shot['start']} end={shot['end']}"
      )
    for key, vocabulary in (
      ("background", COLOURS),
      ("colour", COLOURS),
      ("shape", SHAPES),
      ("direction", DIRECTIONS),
    ):
      if shot[key] not in vocabulary:
        raise ValueError(
          f"shots[{i}][{key!r}] must be one of {list(vocabulary)}, got {shot[key]!r}"
        )
    expected_start = shot["end"]
  return shots


def _check_change_rate(change_rate) -> float:
  if isinstance(change_rate, bool) or not isinstance(change_rate, numbers.Real):
    raise TypeError(
      f"change_rate must be a float in [0, 1], got {type(change_rate).__name__} {change_rate!r}"
    )
  if not 0.0 <= float(change_rate) <= 1.0:
    raise InputError(f"change_rate must be in [0, 1], got {change_rate}")
  return float(change_rate)


def make_consistency_videos(
  out_dir: str | os.PathLike,
  num_videos: int,
  *,
  shots: int = 3,
  frames_per_shot: int = 8,
  height: int = 32,
  width: int = 32,
  fps: float = 8,
  seed: int = 0,
  change_rate: float = 0.25,
  subject_scale: float = SUBJECT_SCALE,
) -> Path:
  """Writes a consistency set into out_dir and returns out_dir.

  Files: videos/00000.mp4, ...; captions.jsonl (synthetic.py's format: {"video", "shots":
  [{"start", "end", "caption"}]}, frame indices, end exclusive); subjects.jsonl ({"video",
  "shots": [{"start", "end", "caption", "background", "colour", "shape", "direction",
  "changed"}]}, what the captions imply; "changed" is true only on the shot where the subject
  is swapped); masks/00000.npz (bool `mask` [frames, H, W], the subject's pixels). Clip i
  depends only on (seed, i), so a larger num_videos extends a smaller set.
  """
  num_videos = check_int("num_videos", num_videos)
  shots = check_int("shots", shots, minimum=2)
  frames_per_shot = check_int("frames_per_shot", frames_per_shot)
  for name, value in (("height", height), ("width", width)):
    check_int(name, value, minimum=8)
    if value % 2:
      raise InputError(f"{name} must be even (H.264 yuv420p), got {value}")
  if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0:
    raise InputError(f"fps must be a positive number, got {fps!r}")
  check_int("seed", seed, minimum=0)
  change_rate = _check_change_rate(change_rate)
  subject_scale = check_subject_scale(subject_scale)
  out_dir = Path(out_dir)
  (out_dir / "videos").mkdir(parents=True, exist_ok=True)
  (out_dir / "masks").mkdir(parents=True, exist_ok=True)
  caption_lines, subject_lines = [], []
  for index in range(num_videos):
    rng = np.random.default_rng((seed, index))
    spec = _with_frames(_describe_clip(rng, shots, change_rate), frames_per_shot)
    video, mask = render_clip(
      spec, height=height, width=width, rng=rng, subject_scale=subject_scale
    )
    relative = f"videos/{index:05d}.mp4"
    write_mp4(out_dir / relative, video, fps=fps)
    np.savez_compressed(out_dir / "masks" / f"{index:05d}.npz", mask=mask)
    caption_lines.append(
      json.dumps(
        {
          "video": relative,
          "shots": [{"start": s["start"], "end": s["end"], "caption": s["caption"]} for s in spec],
        }
      )
    )
    subject_lines.append(json.dumps({"video": relative, "shots": spec}))
  (out_dir / "captions.jsonl").write_text("\n".join(caption_lines) + "\n", encoding="utf-8")
  (out_dir / SUBJECTS_FILENAME).write_text("\n".join(subject_lines) + "\n", encoding="utf-8")
  return out_dir


def read_subjects(path: str | os.PathLike) -> list[dict]:
  """The subjects.jsonl lines of a set (path: the set's folder or the file itself)."""
  path = Path(path)
  if path.is_dir():
    path = path / SUBJECTS_FILENAME
  return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_mask(out_dir: str | os.PathLike, video: str | int) -> np.ndarray:
  """The subject mask bool [frames, H, W] of a clip, by index or by its "videos/00000.mp4"."""
  stem = f"{video:05d}" if isinstance(video, numbers.Integral) else Path(video).stem
  with np.load(Path(out_dir) / "masks" / f"{stem}.npz") as data:
    return data["mask"]


def _caption_tuples(exclude) -> set[tuple[str, ...]]:
  if exclude is None:
    return set()
  if isinstance(exclude, str | os.PathLike):
    path = Path(exclude)
    if path.is_dir():
      path = path / "captions.jsonl"
    if not path.is_file():
      raise ValueError(
        f"exclude must be a captions.jsonl (or its folder), got {exclude}: no such file"
      )
    lines = path.read_text(encoding="utf-8").splitlines()
    return {tuple(s["caption"] for s in json.loads(line)["shots"]) for line in lines if line}
  if isinstance(exclude, Iterable):
    out = set()
    for item in exclude:
      if isinstance(item, str) or not all(isinstance(c, str) for c in item):
        raise TypeError(f"exclude must hold tuples of caption strings (one per shot), got {item!r}")
      out.add(tuple(item))
    return out
  raise TypeError(
    f"exclude must be a path, a set of caption tuples or None, got {type(exclude).__name__}"
  )


def held_out_captions(
  num_sets: int,
  *,
  shots: int = 3,
  seed: int = 1,
  exclude=None,
  frames_per_shot: int = 8,
  change_rate: float = 0.25,
) -> list[list[dict]]:
  """Caption sets for evaluation that no training clip has.

  Returns num_sets distinct lists of per-shot dicts as in subjects.jsonl ("start", "end",
  "caption", "background", "colour", "shape", "direction", "changed"), drawn from a random
  stream of their own (never a training clip's, whatever the seeds) and guaranteed to differ,
  as caption sequences, from every entry of `exclude`: a captions.jsonl path (or its folder),
  a set of caption tuples, or None. Deterministic in its arguments.
  """
  num_sets = check_int("num_sets", num_sets)
  shots = check_int("shots", shots, minimum=2)
  frames_per_shot = check_int("frames_per_shot", frames_per_shot)
  check_int("seed", seed, minimum=0)
  change_rate = _check_change_rate(change_rate)
  taken = _caption_tuples(exclude)
  picked = []
  for attempt in range(100 * num_sets + 1000):
    rng = np.random.default_rng((seed, _HELD_OUT_STREAM, attempt))
    spec = _with_frames(_describe_clip(rng, shots, change_rate), frames_per_shot)
    key = tuple(s["caption"] for s in spec)
    if key in taken:
      continue
    taken.add(key)
    picked.append(spec)
    if len(picked) == num_sets:
      return picked
  raise RuntimeError(f"found only {len(picked)} of {num_sets} caption sets outside exclude")
