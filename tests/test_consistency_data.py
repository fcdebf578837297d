"""The cross-shot consistency set (moga_jax.reproduction.consistency_data) and its metrics
(moga_jax.reproduction.eval).

The metric is checked on ground truth: real clips of the set, decoded after H.264, must score
near 1, and clips whose later shots show a random subject must score near chance.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from moga_jax.data.index import read_index
from moga_jax.data.synthetic import COLOURS, DIRECTIONS, SHAPES
from moga_jax.data.video_io import read_video, write_mp4
from moga_jax.reproduction.consistency_data import (
  CAPTION_LEN,
  caption_shots,
  held_out_captions,
  make_consistency_videos,
  read_mask,
  read_subjects,
  render_clip,
)
from moga_jax.reproduction.eval import (
  chance_levels,
  classify_background,
  classify_subject,
  group_mask_iou,
  group_mask_iou_baseline,
  group_mask_ious,
  group_sizes,
  score_clip,
  score_videos,
  token_mask,
)

NUM_VIDEOS, SHOTS, FRAMES_PER_SHOT, SIZE, SEED = 32, 3, 8, 32, 7
FRAMES = SHOTS * FRAMES_PER_SHOT
SHOT_KEYS = {"start", "end", "caption", "background", "colour", "shape", "direction", "changed"}


# Module fixtures (made videos) are built once: `make test` runs xdist with --dist loadgroup.
pytestmark = pytest.mark.xdist_group("consistency_data")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return make_consistency_videos(
    tmp_path_factory.mktemp("consistency"),
    NUM_VIDEOS,
    shots=SHOTS,
    frames_per_shot=FRAMES_PER_SHOT,
    height=SIZE,
    width=SIZE,
    seed=SEED,
  )


@pytest.fixture(scope="module")
def subjects(dataset):
  return read_subjects(dataset)


@pytest.fixture(scope="module")
def decoded(dataset, subjects):
  return [read_video(dataset / s["video"]) for s in subjects]


def _words(caption: str) -> set[str]:
  return set(re.findall(r"[a-z]+", caption))


# ----------------------------------------------------------------------------- the generator


def test_files_and_formats(dataset, subjects, decoded):
  names = [f"videos/{i:05d}.mp4" for i in range(NUM_VIDEOS)]
  assert sorted(p.name for p in (dataset / "videos").iterdir()) == [n[7:] for n in names]
  assert sorted(p.name for p in (dataset / "masks").iterdir()) == [
    f"{i:05d}.npz" for i in range(NUM_VIDEOS)
  ]
  # captions.jsonl: exactly synthetic.py's format, which the data builder's index reader takes.
  lines = (dataset / "captions.jsonl").read_text(encoding="utf-8").splitlines()
  assert len(lines) == NUM_VIDEOS
  for line, name, subject in zip(lines, names, subjects, strict=True):
    entry = json.loads(line)
    assert set(entry) == {"video", "shots"} and entry["video"] == name
    assert [set(s) for s in entry["shots"]] == [{"start", "end", "caption"}] * SHOTS
    assert [(s["start"], s["end"]) for s in entry["shots"]] == [
      (i * FRAMES_PER_SHOT, (i + 1) * FRAMES_PER_SHOT) for i in range(SHOTS)
    ]
    assert subject["video"] == name
    assert [s["caption"] for s in subject["shots"]] == [s["caption"] for s in entry["shots"]]
  index = read_index(dataset)
  assert [e.video for e in index] == names
  for subject in subjects:
    assert set(subject) == {"video", "shots"}
    for shot in subject["shots"]:
      assert set(shot) == SHOT_KEYS
      assert shot["background"] in COLOURS and shot["colour"] in COLOURS
      assert shot["shape"] in SHAPES and shot["direction"] in DIRECTIONS
      assert isinstance(shot["changed"], bool)
  for video in decoded:
    assert video.shape == (FRAMES, SIZE, SIZE, 3) and video.dtype == np.uint8
  mask = read_mask(dataset, 0)
  assert mask.shape == (FRAMES, SIZE, SIZE) and mask.dtype == np.bool_
  assert np.array_equal(read_mask(dataset, "videos/00000.mp4"), mask)


def test_caption_rules(subjects):
  palette, shapes = set(COLOURS), set(SHAPES)
  changed_clips = 0
  for subject in subjects:
    shots = subject["shots"]
    first = shots[0]
    assert not first["changed"]
    assert first["caption"] == (
      f"a {first['colour']} {first['shape']} moving "
      f"{first['direction']} on a {first['background']} background"
    )
    assert first["background"] != first["colour"]
    assert sum(s["changed"] for s in shots) <= 1
    changed_clips += any(s["changed"] for s in shots)
    for before, shot in itertools.pairwise(shots):
      words = _words(shot["caption"])
      # A new background (not the subject's colour), a new direction, at every cut.
      assert shot["background"] not in (before["background"], shot["colour"])
      assert shot["direction"] != before["direction"]
      assert shot["background"] in words and shot["direction"] in words
      if shot["changed"]:
        # Names the new subject, which differs from the old one in colour and shape.
        assert shot["caption"] == (
          f"a different object, a {shot['colour']} {shot['shape']}, moving "
          f"{shot['direction']} on a {shot['background']} background"
        )
        assert shot["colour"] != before["colour"] and shot["shape"] != before["shape"]
      else:
        # Never names the subject: the only colour word is the background's, no shape word.
        assert shot["caption"] == (
          f"the same object, now moving {shot['direction']} on a {shot['background']} background"
        )
        assert (shot["colour"], shot["shape"]) == (before["colour"], before["shape"])
        assert words & palette == {shot["background"]} and not words & shapes
    assert caption_shots(shots) == [s["caption"] for s in shots]
    assert all(len(s["caption"].encode()) <= CAPTION_LEN for s in shots)
  # change_rate=0.25 over 32 clips: some change and most do not (fixed seed).
  assert 3 <= changed_clips <= 16


def test_change_rate_only_decides_which_clips_change(tmp_path, subjects):
  never = read_subjects(make_consistency_videos(tmp_path / "never", 8, seed=SEED, change_rate=0))
  always = read_subjects(
    make_consistency_videos(tmp_path / "always", 8, seed=SEED, change_rate=1.0)
  )
  assert not any(s["changed"] for clip in never for s in clip["shots"])
  assert all(any(s["changed"] for s in clip["shots"]) for clip in always)
  # The clips that do not change are the same whatever change_rate is.
  for default, unchanged in zip(subjects[:8], never, strict=True):
    if not any(s["changed"] for s in default["shots"]):
      assert default == unchanged


def test_clip_depends_only_on_seed_and_index(tmp_path, dataset, subjects, decoded):
  small = make_consistency_videos(tmp_path / "small", 3, shots=SHOTS, seed=SEED)
  assert read_subjects(small) == subjects[:3]
  assert (small / "captions.jsonl").read_text().splitlines() == (
    dataset / "captions.jsonl"
  ).read_text().splitlines()[:3]
  for i in range(3):
    assert np.array_equal(read_mask(small, i), read_mask(dataset, i))
    # The frames are equal; their H.264 encodings need not be bit-equal: libx264 runs in this
    # process, and its rate control's float decisions can differ after other code has changed
    # the process's floating-point state (seen after tests/test_configs.py ran first).
    again = read_video(small / f"videos/{i:05d}.mp4").astype(int)
    assert np.abs(again - decoded[i]).mean() < 1.0
  other = read_subjects(make_consistency_videos(tmp_path / "other", 3, seed=SEED + 1))
  assert [c["shots"] for c in other] != [c["shots"] for c in subjects[:3]]


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
  """Dilates a bool [T, H, W] mask by r pixels in H and W (square neighbourhood)."""
  padded = np.pad(mask, ((0, 0), (r, r), (r, r)))
  out = np.zeros_like(mask)
  for dy in range(2 * r + 1):
    for dx in range(2 * r + 1):
      out |= padded[:, dy : dy + mask.shape[1], dx : dx + mask.shape[2]]
  return out


def test_masks_match_the_rendered_subject(dataset, subjects, decoded):
  names = list(COLOURS)
  palette = np.array([COLOURS[n] for n in names], np.float32)
  for i, (subject, video) in enumerate(zip(subjects, decoded, strict=True)):
    mask = read_mask(dataset, i)
    nearest = np.argmin(
      np.linalg.norm(video.astype(np.float32)[..., None, :] - palette, axis=-1), axis=-1
    )
    # H.264 keeps colour at half resolution, so only the 1-pixel rim of the shape is blurred:
    # inside it every decoded pixel is the subject's colour, outside it the background's.
    inside, outside = ~_grow(~mask, 1), ~_grow(mask, 1)
    for shot in subject["shots"]:
      frames = slice(shot["start"], shot["end"])
      assert (nearest[frames][inside[frames]] == names.index(shot["colour"])).all()
      assert (nearest[frames][outside[frames]] == names.index(shot["background"])).all()
      area = mask[frames].sum(axis=(1, 2))
      # Radius 0.3 * 32 = 9.6 px: areas pi r^2 ~ 290, (1.7 r)^2 ~ 266, 2 r^2 ~ 184.
      assert (area > 150).all() and (area < 330).all(), (i, shot["shape"], area)
      assert np.ptp(area) <= 0.2 * area.mean()  # the whole shape stays in the frame


def test_render_clip_reproduces_a_spec(subjects):
  video, mask = render_clip(subjects[0]["shots"], height=SIZE, width=SIZE, rng=3)
  assert video.shape == (FRAMES, SIZE, SIZE, 3) and mask.shape == (FRAMES, SIZE, SIZE)
  for shot in subjects[0]["shots"]:
    frames = slice(shot["start"], shot["end"])
    assert (video[frames][mask[frames]] == COLOURS[shot["colour"]]).all()
    assert (video[frames][~mask[frames]] == COLOURS[shot["background"]]).all()
  again, _ = render_clip(subjects[0], height=SIZE, width=SIZE, rng=3)  # a whole subjects line
  assert np.array_equal(video, again)
  with pytest.raises(ValueError, match="shape"):
    render_clip([{**subjects[0]["shots"][0], "shape": "star"}])
  with pytest.raises(ValueError, match="contiguous"):
    render_clip(subjects[0]["shots"][1:])


@pytest.mark.parametrize(
  "kwargs, error, name",
  [
    (dict(num_videos=0), ValueError, "num_videos"),
    (dict(num_videos=2.0), TypeError, "num_videos"),
    (dict(shots=1), ValueError, "shots"),
    (dict(frames_per_shot=0), ValueError, "frames_per_shot"),
    (dict(height=33), ValueError, "height"),
    (dict(width=4), ValueError, "width"),
    (dict(fps=0), ValueError, "fps"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(change_rate=1.5), ValueError, "change_rate"),
    (dict(change_rate=-0.1), ValueError, "change_rate"),
    (dict(change_rate="0.5"), TypeError, "change_rate"),
  ],
)
def test_bad_arguments_raise(tmp_path, kwargs, error, name):
  args = {"num_videos": 1, **kwargs}
  num_videos = args.pop("num_videos")
  with pytest.raises(error, match=name):
    make_consistency_videos(tmp_path, num_videos, **args)
  assert not (tmp_path / "captions.jsonl").exists()


def test_held_out_captions(dataset, subjects):
  training = {tuple(s["caption"] for s in clip["shots"]) for clip in subjects}
  sets = held_out_captions(64, shots=SHOTS, seed=SEED, exclude=dataset / "captions.jsonl")
  assert len(sets) == 64
  keys = [tuple(s["caption"] for s in spec) for spec in sets]
  assert len(set(keys)) == 64 and not set(keys) & training
  for spec in sets:
    assert [set(s) for s in spec] == [SHOT_KEYS] * SHOTS
    assert [(s["start"], s["end"]) for s in spec] == [
      (i * FRAMES_PER_SHOT, (i + 1) * FRAMES_PER_SHOT) for i in range(SHOTS)
    ]
    assert caption_shots(spec) == [s["caption"] for s in spec]
  # Deterministic; a folder and a set of caption tuples work as exclude too.
  assert held_out_captions(64, shots=SHOTS, seed=SEED, exclude=dataset) == sets
  assert held_out_captions(64, shots=SHOTS, seed=SEED, exclude=training) == sets
  # A training clip's caption sequence is never drawn, even when it would be the first pick.
  first = held_out_captions(1, shots=SHOTS, seed=3)[0]
  skipped = held_out_captions(1, shots=SHOTS, seed=3, exclude={tuple(s["caption"] for s in first)})[
    0
  ]
  assert skipped != first
  assert len(held_out_captions(2, shots=4, seed=0)[0]) == 4
  with pytest.raises(ValueError, match="exclude"):
    held_out_captions(1, exclude=dataset / "missing.jsonl")
  with pytest.raises(TypeError, match="exclude"):
    held_out_captions(1, exclude={"a caption, not a tuple"})
  with pytest.raises(ValueError, match="num_sets"):
    held_out_captions(0)


# ------------------------------------------------------------------- the metric on ground truth


def _blur_and_noise(video: np.ndarray, sigma: float, noise: float, seed: int) -> np.ndarray:
  x = np.arange(-3, 4)
  kernel = np.exp(-0.5 * (x / sigma) ** 2)
  kernel /= kernel.sum()
  frames = video.astype(np.float32)
  _, height, width, _ = frames.shape
  padded = np.pad(frames, ((0, 0), (3, 3), (0, 0), (0, 0)), mode="edge")
  frames = sum(k * padded[:, i : i + height] for i, k in enumerate(kernel))
  padded = np.pad(frames, ((0, 0), (0, 0), (3, 3), (0, 0)), mode="edge")
  frames = sum(k * padded[:, :, i : i + width] for i, k in enumerate(kernel))
  frames = frames + np.random.default_rng(seed).normal(0.0, noise, frames.shape)
  return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def test_real_clips_score_near_one(decoded, subjects):
  scores = score_videos(decoded, subjects)
  assert scores["num_videos"] == NUM_VIDEOS and scores["num_shots"] == NUM_VIDEOS * SHOTS
  assert scores["num_later_shots"] == NUM_VIDEOS * (SHOTS - 1)
  assert scores["num_kept_shots"] + scores["num_changed_shots"] == scores["num_later_shots"]
  assert scores["num_changed_shots"] > 0 and scores["num_missing_subjects"] == 0
  for key in (
    "consistency",
    "consistency_colour",
    "consistency_shape",
    "consistency_kept",
    "consistency_changed",
    "self_consistency",
    "first_subject",
    "adherence",
  ):
    assert scores[key] >= 0.95, (key, scores)


def test_real_clips_with_blur_and_noise_score_high(decoded, subjects):
  # Gaussian blur sigma 1 px and noise sigma 12 levels: well past H.264's own damage.
  blurred = [_blur_and_noise(v, 1.0, 12.0, seed=i) for i, v in enumerate(decoded)]
  scores = score_videos(blurred, subjects)
  for key in ("consistency", "consistency_colour", "consistency_shape", "adherence"):
    assert scores[key] >= 0.9, (key, scores)


def test_random_subjects_score_near_chance(tmp_path, subjects):
  rng = np.random.default_rng(11)
  videos, random_specs = [], []
  for i, clip in enumerate(subjects):
    shots = [dict(s) for s in clip["shots"]]
    for shot in shots[1:]:  # keep the backgrounds, redraw the subject uniformly
      shot["colour"] = str(rng.choice([c for c in COLOURS if c != shot["background"]]))
      shot["shape"] = str(rng.choice(SHAPES))
    video, _ = render_clip(shots, height=SIZE, width=SIZE, rng=i)
    write_mp4(tmp_path / f"{i}.mp4", video)
    videos.append(read_video(tmp_path / f"{i}.mp4"))
    random_specs.append(shots)
  # The metric reads the random subjects right...
  assert score_videos(videos, random_specs)["consistency"] >= 0.95
  # ...so against the captions' subject they score what a uniform guess does: p = 1/5 for the
  # colour (the palette less the background), 1/3 for the shape, 1/15 for both. Over 64 later
  # shots one standard deviation is 0.05, 0.06 and 0.03: the bands are about 3 of them.
  scores = score_videos(videos, subjects)
  chance = chance_levels()
  assert chance["consistency_colour"] == pytest.approx(1 / (len(COLOURS) - 1))
  assert chance["consistency_shape"] == pytest.approx(1 / len(SHAPES))
  assert chance["consistency"] == pytest.approx(1 / 15)
  for key, band in (
    ("consistency", 0.1),
    ("consistency_colour", 0.15),
    ("consistency_shape", 0.18),
  ):
    assert abs(scores[key] - chance[key]) <= band, (key, scores[key], chance[key])
  assert scores["first_subject"] >= 0.95 and scores["adherence"] >= 0.95


def test_classifiers_on_simple_frames():
  frame = np.zeros((SIZE, SIZE, 3), np.uint8)
  frame[:] = COLOURS["blue"]
  assert classify_background(frame) == "blue"
  assert classify_subject(frame[None].repeat(4, 0), "blue") is None  # nothing but background
  shot = {
    "start": 0,
    "end": 4,
    "background": "blue",
    "colour": "yellow",
    "shape": "triangle",
    "direction": "up",
  }
  video, _ = render_clip([shot], rng=0)
  assert classify_background(video[0]) == "blue"
  assert classify_subject(video, "blue") == ("yellow", "triangle")
  # A model's colours are never exact: a uniform shift of 25 levels changes nothing.
  shifted = np.clip(video.astype(int) + 25, 0, 255).astype(np.uint8)
  assert classify_subject(shifted, classify_background(shifted[0])) == ("yellow", "triangle")
  scores = score_clip(
    np.concatenate([video, frame[None].repeat(4, 0)]), [shot, {**shot, "start": 4, "end": 8}]
  )
  assert scores["num_missing_subjects"] == 1 and scores["consistency"] == 0.0
  assert scores["shots"][1]["subject_pred"] is None and scores["self_consistency"] == 0.0
  with pytest.raises(ValueError, match="frames"):
    score_clip(video, [shot, {**shot, "start": 4, "end": 8}])
  with pytest.raises(TypeError, match="uint8"):
    score_clip(video.astype(np.float32), [shot])
  with pytest.raises(ValueError, match="background"):
    classify_subject(video, "purple")


# ------------------------------------------------------------------------- groups vs subject


def test_group_mask_iou(dataset):
  mask = read_mask(dataset, 0)  # [24, 32, 32]
  grid = (FRAMES, 4, 4)  # the tiny model's token grid: 32 px / (space-to-depth 4 * patch 2)
  subject_tokens = token_mask(mask, grid) > 0.5
  assert subject_tokens.any() and not subject_tokens.all()
  # One group holding exactly the subject's tokens (the rest split among three more groups).
  rng = np.random.default_rng(0)
  ids = np.where(subject_tokens, 1, rng.choice([0, 2, 3], size=grid))
  assert group_mask_iou(ids, mask) == 1.0
  assert group_mask_ious(ids, mask)[1] == 1.0 and group_mask_ious(ids, mask)[0] < 0.5
  assert group_sizes(ids).sum() == np.prod(grid) and group_sizes(ids)[1] == subject_tokens.sum()
  assert len(group_sizes(ids, num_groups=6)) == 6
  # At pixel resolution the mask itself is a perfect grouping, hard or soft.
  assert group_mask_iou(mask.astype(np.int32), mask) == 1.0
  assert group_mask_iou(mask.astype(np.int32), mask, soft=True) == 1.0
  # Random ids over four groups share little with the subject, and match their own baseline.
  random_ids = rng.integers(0, 4, size=grid)
  value = group_mask_iou(random_ids, mask)
  baseline = group_mask_iou_baseline(random_ids, mask, permutations=16)
  assert value < 0.25 and baseline < 0.25 and abs(value - baseline) < 0.1
  assert group_mask_iou_baseline(ids, mask, permutations=16) < 0.3
  # A by-hand case: subject tokens {a, b}, group {b, c}: IoU 1/3.
  tiny_mask = np.zeros((1, 2, 4), bool)
  tiny_mask[0, :, :2] = True
  tiny_ids = np.array([[[0, 1, 1, 0]]])
  assert group_mask_ious(tiny_ids, tiny_mask).tolist() == pytest.approx([1 / 3, 1 / 3])
  assert np.isnan(group_mask_iou(tiny_ids, np.zeros_like(tiny_mask)))
  with pytest.raises(ValueError, match="multiple"):
    group_mask_iou(np.zeros((5, 4, 4), int), mask)
  with pytest.raises(ValueError, match="group_ids"):
    group_mask_iou(np.zeros((FRAMES, 16), int), mask)
