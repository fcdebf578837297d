"""Scores generated videos of the consistency set (moga_jax.reproduction.consistency_data);
numpy only.

Per shot, the background is the palette colour most pixels are nearest to, and the subject is
the largest connected blob of pixels far from that background: its colour is the palette colour
nearest to its median pixel, its shape the one of synthetic.py's shape templates (area- and
centroid-matched) it overlaps best. Both are pooled over the shot's frames, so a few bad frames
do not flip the answer, and no exact colour is needed: blur, noise and H.264 pass.

A later shot is consistent when its subject (colour AND shape) is the one the captions imply:
the first shot's subject, or the new one after a caption says "a different object". Adherence
is the share of shots whose background is the caption's. group_mask_iou checks the paper's
qualitative claim that routed groups segment objects: the best IoU between one group's tokens
and the subject's tokens, pooled over every frame of the clip (so a group must follow the
subject across the cuts to score high).

Checked on real clips of the set after H.264: 1.0 on every score at 32x32 (3 shots) and 64x64
(4 shots); still >= 0.99 after a Gaussian blur of 1-2 px plus noise of 12-25 levels. At 16x16
a subject is ~7 px wide and H.264 keeps its colour at 8x8: colour stays right but the shape is
read right only ~80% of the time, so use 32x32 or more.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from moga_jax.data.synthetic import COLOURS, SHAPES, _shape_mask
from moga_jax.data.video_io import _check_frames

_NAMES: tuple[str, ...] = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], np.float32)  # [K, 3]
_PAIRWISE = np.linalg.norm(_PALETTE[:, None] - _PALETTE[None], axis=-1)
# A pixel is foreground when it is farther than this from the background colour: 40% of the way
# to the nearest other palette colour, far above H.264 and mild noise, below any subject colour.
_FOREGROUND_DIST = 0.4 * np.where(np.eye(len(_NAMES), dtype=bool), np.inf, _PAIRWISE).min(axis=1)
# Area of synthetic.py's shapes in units of radius**2 (square: half side 0.85 r).
_AREA_PER_R2 = {"circle": math.pi, "square": 1.7**2, "triangle": 2.0}


def _nearest(pixels: np.ndarray) -> np.ndarray:
  """Index of the nearest palette colour for float [..., 3] pixels."""
  return np.argmin(np.linalg.norm(pixels[..., None, :] - _PALETTE, axis=-1), axis=-1)


def _background_index(frames: np.ndarray) -> int:
  """The palette colour most pixels of uint8 [T, H, W, 3] are nearest to (ties: palette order)."""
  votes = np.bincount(_nearest(frames.astype(np.float32)).ravel(), minlength=len(_NAMES))
  return int(np.argmax(votes))


def classify_background(frame) -> str:
  """Palette name of the dominant colour of a uint8 [H, W, 3] frame (most pixels nearest to it).

  Also accepts [T, H, W, 3] and then pools the votes of all T frames.
  """
  frame = np.asarray(frame)
  frames = _check_frames(frame[None] if frame.ndim == 3 else frame, "frame")
  return _NAMES[_background_index(frames)]


def _largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest 8-connected component of a bool [H, W] mask (ties: the first in raster order)."""
  if not mask.any():
    return mask
  height, width = mask.shape
  big = height * width
  # Every pixel takes the smallest label among its 8 neighbours until nothing changes.
  padded = np.full((height + 2, width + 2), big)
  labels = padded[1:-1, 1:-1]  # a view: writing it updates padded
  labels[mask] = np.flatnonzero(mask)
  background = ~mask
  shifts = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
  while True:
    new = labels.copy()
    for dy, dx in shifts:
      np.minimum(new, padded[dy : dy + height, dx : dx + width], out=new)
    new[background] = big
    if np.array_equal(new, labels):
      break
    labels[...] = new
  counts = np.bincount(labels[mask], minlength=big)
  return labels == int(np.argmax(counts))


def _shape_scores(foreground: np.ndarray) -> np.ndarray:
  """IoU of a bool [H, W] blob with each shape template of the same area and centroid."""
  height, width = foreground.shape
  ys, xs = np.nonzero(foreground)
  area = ys.size
  cy, cx = ys.mean() + 0.5, xs.mean() + 0.5  # pixel centres, as _shape_mask samples them
  scores = np.zeros(len(SHAPES))
  for i, shape in enumerate(SHAPES):
    radius = math.sqrt(area / _AREA_PER_R2[shape])
    # The apex-up triangle's centroid lies radius / 3 below its centre.
    offset = radius / 3 if shape == "triangle" else 0.0
    template = _shape_mask(shape, cy - offset, cx, radius, height, width)
    union = np.count_nonzero(template | foreground)
    scores[i] = np.count_nonzero(template & foreground) / union if union else 0.0
  return scores


def _frame_subject(frame: np.ndarray, bg_index: int, min_pixels: int):
  """(median subject RGB, shape IoUs) of one float [H, W, 3] frame, or None if no subject."""
  labels = _nearest(frame)
  near_bg = labels == bg_index
  # The background as rendered (a model's is rarely the exact palette colour).
  if near_bg.sum() >= 0.1 * near_bg.size:
    bg = np.median(frame[near_bg], axis=0)
  else:
    bg = _PALETTE[bg_index]
  distance = np.linalg.norm(frame - bg, axis=-1)
  rough = _largest_component(distance > _FOREGROUND_DIST[bg_index])
  if rough.sum() < min_pixels:
    return None
  # The subject's colour from the half of the blob farthest from the background (its core,
  # not the blurred rim), then the blob again as every pixel nearer that colour than the
  # background: the half-way boundary keeps a blurred shape's size and outline.
  far = distance[rough]
  colour = np.median(frame[rough][far >= np.median(far)], axis=0)
  axis = colour - bg
  along = ((frame - bg) @ axis) / max(float(axis @ axis), 1e-6)
  blob = _largest_component(along > 0.5)
  if blob.sum() < min_pixels:
    return None
  return colour, _shape_scores(blob)


def _smooth(frame: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of a float [H, W, 3] frame (edges replicated)."""
  if sigma <= 0:
    return frame
  radius = max(1, math.ceil(3 * sigma))
  x = np.arange(-radius, radius + 1)
  kernel = np.exp(-0.5 * (x / sigma) ** 2)
  kernel /= kernel.sum()
  height, width, _ = frame.shape
  padded = np.pad(frame, ((radius, radius), (0, 0), (0, 0)), mode="edge")
  frame = sum(k * padded[i : i + height] for i, k in enumerate(kernel))
  padded = np.pad(frame, ((0, 0), (radius, radius), (0, 0)), mode="edge")
  return sum(k * padded[:, i : i + width] for i, k in enumerate(kernel))


def classify_subject(
  frames, background: str, *, min_pixels: int | None = None, smooth: float = 0.7
):
  """(colour, shape) of the subject in a shot's uint8 [T, H, W, 3] frames, or None if none.

  `background` is the shot's background colour name (e.g. classify_background's answer). In
  every frame the foreground is the largest 8-connected blob of pixels far from the rendered
  background; frames without one (fewer than min_pixels, default 0.5% of the frame and at least
  4) are skipped. The colour is the palette colour (other than the background) nearest to the
  median over frames of the blob's core colour; the shape is the template with the highest IoU
  summed over frames. None when no frame has a foreground.

  Frames are first blurred with a Gaussian of `smooth` pixels: H.264 stores colour at half
  resolution, and on colour pairs of similar brightness (magenta on green) the decoded edge is
  blocky enough to pass a circle for a square; a light blur evens that out (measured on 40
  clips: shape right in 97% of decoded frames without it, 100% with it).
  """
  frames = np.asarray(frames)
  frames = _check_frames(frames[None] if frames.ndim == 3 else frames, "frames")
  if background not in COLOURS:
    raise ValueError(f"background must be one of {list(COLOURS)}, got {background!r}")
  bg_index = _NAMES.index(background)
  _, height, width, _ = frames.shape
  if min_pixels is None:
    min_pixels = max(4, round(0.005 * height * width))
  colours, scores = [], np.zeros(len(SHAPES))
  for frame in frames.astype(np.float32):
    found = _frame_subject(_smooth(frame, smooth), bg_index, min_pixels)
    if found is not None:
      colours.append(found[0])
      scores += found[1]
  if not colours:
    return None
  distances = np.linalg.norm(_PALETTE - np.median(colours, axis=0), axis=-1)
  distances[bg_index] = np.inf
  return _NAMES[int(np.argmin(distances))], SHAPES[int(np.argmax(scores))]


def _spec_shots(spec) -> list[dict]:
  if isinstance(spec, dict):
    if "shots" not in spec:
      raise ValueError(
        'spec must be a subjects.jsonl line (a dict with "shots") or a list of per-shot dicts'
      )
    spec = spec["shots"]
  shots = list(spec)
  if not shots:
    raise ValueError("spec must describe at least one shot")
  for i, shot in enumerate(shots):
    missing = {"start", "end", "background", "colour", "shape"} - set(shot)
    if missing:
      raise ValueError(f"spec shot {i} is missing {sorted(missing)}")
  return shots


def score_clip(video, spec) -> dict:
  """Scores one uint8 [F, H, W, 3] video against its spec (a subjects.jsonl line, or the list
  of per-shot dicts held_out_captions gives).

  Returns {"shots": [per-shot dict], summary...}. Each shot dict holds the expected and
  predicted background and subject ("subject_pred" is None when no foreground was found) and
  the booleans background_ok, colour_ok, shape_ok, subject_ok (colour and shape), plus "later"
  (not the first shot) and "changed". The summary is that of score_videos for this one clip.
  """
  video = _check_frames(video, "video")
  shots = _spec_shots(spec)
  if shots[-1]["end"] > video.shape[0]:
    raise ValueError(
      f"the spec's shots end at frame {shots[-1]['end']} but the video has only "
      f"{video.shape[0]} frames"
    )
  rows = []
  for i, shot in enumerate(shots):
    frames = video[shot["start"] : shot["end"]]
    background = _NAMES[_background_index(frames)]
    predicted = classify_subject(frames, background)
    colour_ok = predicted is not None and predicted[0] == shot["colour"]
    shape_ok = predicted is not None and predicted[1] == shot["shape"]
    rows.append(
      dict(
        start=int(shot["start"]),
        end=int(shot["end"]),
        background=shot["background"],
        background_pred=background,
        background_ok=background == shot["background"],
        subject=(shot["colour"], shot["shape"]),
        subject_pred=predicted,
        colour_ok=colour_ok,
        shape_ok=shape_ok,
        subject_ok=colour_ok and shape_ok,
        later=i > 0,
        changed=bool(shot.get("changed", False)),
        # Same predicted subject as the previous shot, where the captions keep the subject.
        same_as_previous=(
          i > 0
          and not shot.get("changed", False)
          and predicted is not None
          and predicted == rows[-1]["subject_pred"]
        ),
      )
    )
  return {"shots": rows, **_summarise(rows)}


def _mean(values: list[bool]) -> float:
  return float(np.mean(values)) if values else float("nan")


def _summarise(rows: list[dict]) -> dict:
  later = [r for r in rows if r["later"]]
  kept = [r for r in later if not r["changed"]]
  changed = [r for r in later if r["changed"]]
  first = [r for r in rows if not r["later"]]
  return {
    "consistency": _mean([r["subject_ok"] for r in later]),
    "consistency_colour": _mean([r["colour_ok"] for r in later]),
    "consistency_shape": _mean([r["shape_ok"] for r in later]),
    "consistency_kept": _mean([r["subject_ok"] for r in kept]),
    "consistency_changed": _mean([r["subject_ok"] for r in changed]),
    "self_consistency": _mean([r["same_as_previous"] for r in kept]),
    "first_subject": _mean([r["subject_ok"] for r in first]),
    "adherence": _mean([r["background_ok"] for r in rows]),
    "num_shots": len(rows),
    "num_later_shots": len(later),
    "num_kept_shots": len(kept),
    "num_changed_shots": len(changed),
    "num_missing_subjects": sum(r["subject_pred"] is None for r in rows),
  }


def score_videos(videos: Iterable, specs: Sequence) -> dict:
  """Pools score_clip over clips (every shot counts once) and returns the summary.

  videos: uint8 [F, H, W, 3] arrays or paths to mp4s (read with moga_jax.data.video_io.read_video);
  specs: one per video, as for score_clip. Keys: consistency (later shots whose subject, colour
  and shape, is the one the captions imply), consistency_colour, consistency_shape,
  consistency_kept / consistency_changed (later shots whose captions keep / swap the subject),
  self_consistency (kept shots whose predicted subject equals the previous shot's prediction,
  right or wrong), first_subject (first shots showing the named subject), adherence (shots
  whose background is the caption's), and the counts num_videos, num_shots, num_later_shots,
  num_kept_shots, num_changed_shots, num_missing_subjects. Rates with nothing to count are nan.
  """
  specs = list(specs)
  rows, count = [], 0
  for video, spec in zip(videos, specs, strict=True):
    if isinstance(video, str | os.PathLike):
      from moga_jax.data.video_io import read_video  # PyAV only when paths are given

      video = read_video(video)
    rows.extend(score_clip(video, spec)["shots"])
    count += 1
  return {**_summarise(rows), "num_videos": count}


def chance_levels() -> dict:
  """Expected scores of a subject drawn uniformly at random from the colours other than the
  shot's background and from the shapes (what "random subject" means), and of a uniformly
  random background."""
  colour = 1.0 / (len(COLOURS) - 1)
  shape = 1.0 / len(SHAPES)
  return {
    "consistency": colour * shape,
    "consistency_colour": colour,
    "consistency_shape": shape,
    "adherence": 1.0 / len(COLOURS),
  }


# ------------------------------------------------------------------------- groups vs subject


def _area_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in]: the share of each output cell covered by each input pixel."""
  scale = size_in / size_out
  lo = np.arange(size_out)[:, None] * scale
  edges = np.arange(size_in)[None, :]
  overlap = np.clip(np.minimum(lo + scale, edges + 1) - np.maximum(lo, edges), 0.0, None)
  return overlap / scale


def token_mask(subject_mask, grid: tuple[int, int, int]) -> np.ndarray:
  """Fraction of subject pixels in each token: float [t, h, w] from a bool [T, H, W] mask.

  Space is area-averaged (H >= h, W >= w, any ratio); time needs T == t or T a multiple of t
  (frames averaged in consecutive blocks). For a causal video VAE (1 + 4k frames -> 1 + k
  latents), pick or average the frames of each latent before calling.
  """
  mask = np.asarray(subject_mask)
  if mask.ndim != 3:
    raise ValueError(f"subject_mask must have shape [T, H, W], got {mask.shape}")
  t, h, w = (int(g) for g in grid)
  frames, height, width = mask.shape
  if frames % t:
    raise ValueError(f"subject_mask has {frames} frames, not a multiple of the {t} token frames")
  if height < h or width < w:
    raise ValueError(f"subject_mask {height}x{width} is smaller than the token grid {h}x{w}")
  fraction = mask.astype(np.float64).reshape(t, frames // t, height, width).mean(axis=1)
  return np.einsum("yh,thw,xw->tyx", _area_matrix(height, h), fraction, _area_matrix(width, w))


def _check_group_ids(group_ids) -> np.ndarray:
  ids = np.asarray(group_ids)
  if ids.ndim != 3:
    raise ValueError(f"group_ids must have shape [T, h, w], got {ids.shape}")
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"group_ids must be integers, got dtype {ids.dtype}")
  if ids.size and ids.min() < 0:
    raise ValueError(f"group_ids must be >= 0, got {ids.min()}")
  return ids


def group_sizes(group_ids, num_groups: int | None = None) -> np.ndarray:
  """Tokens per group: int [num_groups] (default: max id + 1)."""
  ids = _check_group_ids(group_ids)
  return np.bincount(ids.ravel(), minlength=num_groups or 0)


def group_mask_ious(
  group_ids, subject_mask, *, soft: bool = False, num_groups: int | None = None
) -> np.ndarray:
  """IoU of each group's tokens with the subject's tokens, pooled over all frames: [groups].

  A token belongs to the subject when more than half its pixels are subject pixels; with soft,
  the IoU is area-weighted instead (sum min / sum max of the group indicator and the fraction).
  """
  ids = _check_group_ids(group_ids)
  fraction = token_mask(subject_mask, ids.shape)
  subject = fraction if soft else (fraction > 0.5).astype(np.float64)
  count = max(int(ids.max()) + 1, num_groups or 0)
  ious = np.zeros(count)
  for g in range(count):
    member = (ids == g).astype(np.float64)
    inter = np.minimum(member, subject).sum()
    union = np.maximum(member, subject).sum()
    ious[g] = inter / union if union else 0.0
  return ious


def group_mask_iou(group_ids, subject_mask, *, soft: bool = False) -> float:
  """The best group's IoU with the subject (group_mask_ious' max); nan if no subject token."""
  ids = _check_group_ids(group_ids)
  fraction = token_mask(subject_mask, ids.shape)
  if not (fraction > 0 if soft else fraction > 0.5).any():
    return float("nan")
  return float(group_mask_ious(ids, subject_mask, soft=soft).max())


def group_mask_iou_baseline(
  group_ids, subject_mask, *, permutations: int = 32, seed: int = 0, soft: bool = False
) -> float:
  """Mean best IoU after shuffling the tokens' group ids (same group sizes, no structure).

  The chance level to compare group_mask_iou with: a router that balances its groups but
  ignores content scores about this.
  """
  ids = _check_group_ids(group_ids)
  rng = np.random.default_rng(seed)
  values = [
    group_mask_iou(rng.permutation(ids.ravel()).reshape(ids.shape), subject_mask, soft=soft)
    for _ in range(permutations)
  ]
  return float(np.mean(values))
