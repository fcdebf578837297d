"""Tiny multi-shot videos with captions, for tests and for checking that a small model learns.

Every shot is one flat background with one shape sliding across it in a straight line; shots are
joined by hard cuts. The vocabulary (6 colours, 3 shapes, 4 directions) is small on purpose, and
the colours are saturated and far apart so H.264 chroma subsampling cannot blur them together.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import numpy as np

from moga_jax.data.video_io import write_mp4
from moga_jax.errors import InputError
from pallas_kernels.common import check_int

__all__ = [
  "COLOURS",
  "DIRECTIONS",
  "SHAPES",
  "SUBJECT_SCALE",
  "check_subject_scale",
  "make_synthetic_videos",
]

COLOURS: dict[str, tuple[int, int, int]] = {
  "red": (230, 30, 30),
  "green": (30, 200, 40),
  "blue": (30, 60, 230),
  "yellow": (240, 220, 30),
  "magenta": (220, 40, 220),
  "cyan": (30, 210, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# (dy, dx) unit steps in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {
  "left": (0, -1),
  "right": (0, 1),
  "up": (-1, 0),
  "down": (1, 0),
}


def _shape_mask(shape: str, cy: float, cx: float, radius: float, height: int, width: int):
  """Boolean [H, W] mask of the shape centred at (cy, cx), sampled at pixel centres."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
  dy, dx = y - cy, x - cx
  if shape == "circle":
    return dy * dy + dx * dx <= radius * radius
  if shape == "square":
    half = 0.85 * radius  # about the circle's area, so no shape is much easier to see
    return (np.abs(dy) <= half) & (np.abs(dx) <= half)
  if shape == "triangle":
    # Apex up; the half-width grows linearly from 0 at the top to `radius` at the base.
    return (np.abs(dy) <= radius) & (np.abs(dx) <= 0.5 * (dy + radius))
  raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


# The subject's radius as a fraction of the frame's smaller side. At 0.3 a subject covers ~28%
# of a 32x32 frame: big enough that the tiny models learn its shape (at 0.22 they drew it in
# only 4-17% of samples after 800 steps; see the README's reproduction section).
SUBJECT_SCALE = 0.3


def check_subject_scale(subject_scale) -> float:
  if isinstance(subject_scale, bool) or not isinstance(subject_scale, numbers.Real):
    raise TypeError(
      f"subject_scale must be a float in (0, 0.5), got "
      f"{type(subject_scale).__name__} {subject_scale!r}"
    )
  if not 0.0 < float(subject_scale) < 0.5:
    raise InputError(
      f"subject_scale must be in (0, 0.5) (the radius as a fraction of the "
      f"frame's smaller side), got {subject_scale}"
    )
  return float(subject_scale)


def _render_shot(
  rng, shot: dict, frames: int, height: int, width: int, subject_scale: float = SUBJECT_SCALE
) -> np.ndarray:
  """uint8 [frames, H, W, 3]: the shape crosses the frame along its direction during the shot."""
  radius = max(3.0, subject_scale * min(height, width))
  dy, dx = DIRECTIONS[shot["direction"]]
  # Along the motion axis the shape travels from one margin to the other; across it, it stays
  # at a random offset that keeps it fully inside the frame.
  pos = {}
  for axis, size, step in (("y", height, dy), ("x", width, dx)):
    lo, hi = radius, size - radius
    if step == 0:
      pos[axis] = np.full(frames, rng.uniform(lo, hi))
    else:
      path = np.linspace(lo, hi, frames) if frames > 1 else np.full(1, (lo + hi) / 2)
      pos[axis] = path if step > 0 else path[::-1]
  video = np.empty((frames, height, width, 3), np.uint8)
  video[:] = COLOURS[shot["background"]]
  for t in range(frames):
    mask = _shape_mask(shot["shape"], pos["y"][t], pos["x"][t], radius, height, width)
    video[t][mask] = COLOURS[shot["colour"]]
  return video


def _pick_shots(rng, shots: int) -> list[dict]:
  """Random shot descriptions; each cut changes the background so it is visible."""
  names = list(COLOURS)
  picked, previous_bg = [], None
  for _ in range(shots):
    background = str(rng.choice([c for c in names if c != previous_bg]))
    colour = str(rng.choice([c for c in names if c != background]))
    shape = str(rng.choice(SHAPES))
    direction = str(rng.choice(list(DIRECTIONS)))
    picked.append(dict(background=background, colour=colour, shape=shape, direction=direction))
    previous_bg = background
  return picked


def _caption(shot: dict) -> str:
  return (
    f"a {shot['colour']} {shot['shape']} moving {shot['direction']} "
    f"on a {shot['background']} background"
  )


def make_synthetic_videos(
  out_dir: str | os.PathLike,
  num_videos: int,
  *,
  shots: int = 2,
  frames_per_shot: int = 8,
  height: int = 32,
  width: int = 32,
  fps: float = 8,
  seed: int = 0,
  subject_scale: float = SUBJECT_SCALE,
) -> Path:
  """Writes out_dir/videos/00000.mp4, ... and out_dir/captions.jsonl; returns out_dir.

  Each captions.jsonl line is {"video": "videos/00000.mp4", "shots": [{"start", "end",
  "caption"}, ...]} with frame indices, start inclusive and end exclusive. Video i depends only
  on (seed, i), so a larger num_videos extends a smaller set instead of changing it.
  """
  num_videos = check_int("num_videos", num_videos)
  shots = check_int("shots", shots)
  frames_per_shot = check_int("frames_per_shot", frames_per_shot)
  for name, value in (("height", height), ("width", width)):
    check_int(name, value, minimum=8)
    if value % 2:
      raise InputError(f"{name} must be even (H.264 yuv420p), got {value}")
  check_int("seed", seed, minimum=0)
  subject_scale = check_subject_scale(subject_scale)
  out_dir = Path(out_dir)
  (out_dir / "videos").mkdir(parents=True, exist_ok=True)
  lines = []
  for index in range(num_videos):
    rng = np.random.default_rng((seed, index))
    described = _pick_shots(rng, shots)
    clips = [
      _render_shot(rng, shot, frames_per_shot, height, width, subject_scale) for shot in described
    ]
    relative = f"videos/{index:05d}.mp4"
    write_mp4(out_dir / relative, np.concatenate(clips), fps=fps)
    entries = [
      {"start": i * frames_per_shot, "end": (i + 1) * frames_per_shot, "caption": _caption(s)}
      for i, s in enumerate(described)
    ]
    lines.append(json.dumps({"video": relative, "shots": entries}))
  (out_dir / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return out_dir
