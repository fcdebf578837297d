"""Shot detection and clip making (moga_jax.data.shots) on videos with known cuts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from commands import run_command

from moga_jax.data import build_dataset, read_index
from moga_jax.data.index import PLACEHOLDER_CAPTION
from moga_jax.data.shots import (
  assign_captions,
  detect_shots,
  merge_shots,
  trim_gradual,
  write_source,
)
from moga_jax.data.video_io import probe_video, write_mp4

pytestmark = pytest.mark.xdist_group("shots")

HEIGHT, WIDTH = 36, 64


def _scene(rng, frames: int) -> np.ndarray:
  """One 'source': a smooth random colour field with its own tint, panning 1 px per frame, the
  kind of slow camera motion a content detector must not mistake for a cut."""
  cells = rng.random((4, 6, 3))
  ys = np.linspace(0, 3, HEIGHT)
  xs = np.linspace(0, 5, WIDTH + frames)
  y0, x0 = np.minimum(ys.astype(int), 2), np.minimum(xs.astype(int), 4)
  fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  field = (cells[y0][:, x0] * (1 - fx) + cells[y0][:, x0 + 1] * fx) * (1 - fy) + (
    cells[y0 + 1][:, x0] * (1 - fx) + cells[y0 + 1][:, x0 + 1] * fx
  ) * fy
  picture = 255 * (0.6 * field + 0.4 * rng.random(3))
  return np.stack([picture[:, t : t + WIDTH] for t in range(frames)]).astype(np.uint8)


def _cut_video(path: Path, lengths, fps: float, seed: int) -> list[int]:
  """Hard cuts between len(lengths) different scenes; returns the true cut frames."""
  rng = np.random.default_rng(seed)
  write_mp4(path, np.concatenate([_scene(rng, n) for n in lengths]), fps=fps, crf=18)
  return np.cumsum(lengths)[:-1].tolist()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """Two long videos with known hard cuts: 24 fps and 30 fps, in nested folders."""
  root = tmp_path_factory.mktemp("videos")
  cuts = {
    "a/long.mp4": _cut_video(root / "a" / "long.mp4", [40, 55, 30, 62, 48], 24, seed=1),
    "b.mp4": _cut_video(root / "b.mp4", [45, 70, 38], 30, seed=2),
  }
  return root, cuts


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_every_hard_cut_is_found_within_two_frames(videos, detector):
  root, cuts = videos
  for name, true_cuts in cuts.items():
    found = detect_shots(root / name, detector=detector)
    boundaries = [start for start, _ in found.shots[1:]]
    assert len(boundaries) == len(true_cuts), (name, boundaries, true_cuts)
    assert all(abs(b - t) <= 2 for b, t in zip(boundaries, true_cuts, strict=True)), boundaries
    # The shots tile the whole video.
    assert found.shots[0][0] == 0 and found.shots[-1][1] == probe_video(root / name).num_frames
    assert all(a[1] == b[0] for a, b in zip(found.shots, found.shots[1:], strict=False))
    assert len(found.scores) == found.shots[-1][1]


def test_trim_gradual_trims_only_transitions_spread_over_frames():
  scores = np.zeros(60, np.float32)
  scores[20] = 40.0  # a hard cut: one frame of change
  scores[39:42] = [12.0, 30.0, 12.0]  # a dissolve: the frames beside the cut change too
  shots = [(0, 20), (20, 40), (40, 60)]
  trimmed = trim_gradual(shots, scores, trim_frames=2, gradual_score=8.0)
  assert trimmed == [(0, 20), (20, 38), (42, 60)]
  assert trim_gradual(shots, scores, trim_frames=0, gradual_score=8.0) == shots
  with pytest.raises(ValueError, match="trim_frames"):
    trim_gradual(shots, scores, trim_frames=-1, gradual_score=8.0)


def test_merge_shots_fills_clips_without_overlap_or_gaps_in_shots():
  # At 24 fps in, 8 fps out: shots of 3, 2, 0.5 (dropped), 4, 1.5 and 3 seconds.
  shots = [(0, 72), (72, 120), (120, 132), (132, 228), (228, 264), (264, 336)]
  samples = merge_shots(shots, fps_in=24, fps_out=8, num_frames=32, max_shots=3, min_shot_s=1.0)
  # Sample 1: shots 0 and 1 hold 24 + 16 frames: cut at 32. Shot 2 is too short and ends the
  # run. Sample 2: shot 3 alone fills 32 (4 s). Shots 4 + 5 hold 12 + 24: cut at 32.
  assert [s.shot_ids for s in samples] == [(0, 1), (3,), (4, 5)]
  assert samples[0].ranges == ((0, 24), (24, 32))
  assert samples[1].ranges == ((44, 76),)
  assert samples[2].ranges == ((76, 88), (88, 108))
  for sample in samples:
    assert sum(b - a for a, b in sample.ranges) == 32
  ends = [s.ranges[-1][1] for s in samples]
  starts = [s.ranges[0][0] for s in samples]
  assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))  # never overlapping
  # max_shots=1 forbids merging: only shots that fill a clip alone survive.
  alone = merge_shots(shots, fps_in=24, fps_out=8, num_frames=32, max_shots=1, min_shot_s=1.0)
  assert [s.shot_ids for s in alone] == [(3,)]
  with pytest.raises(ValueError, match="num_frames"):
    merge_shots(shots, fps_in=24, fps_out=8, num_frames=0, max_shots=1, min_shot_s=1.0)
  with pytest.raises(ValueError, match="fps_out must be a positive number"):
    merge_shots(shots, fps_in=24, fps_out=0, num_frames=8, max_shots=1, min_shot_s=1.0)


def test_assign_captions_by_index_and_by_range():
  shots = [(0, 40), (40, 95), (95, 125)]
  rows = [
    {"video": "v.mp4", "shot": 2, "caption": "third"},
    {"video": "v.mp4", "start": 38, "end": 90, "caption": "second"},  # mostly shot 1
    {"video": "other.mp4", "shot": 0, "caption": "elsewhere"},
  ]
  assert assign_captions(rows, "v.mp4", shots) == [None, "second", "third"]


def test_write_source_index_trains(videos, tmp_path):
  """The index written from the detected shots reads back, its samples build into a dataset of
  the config's shape at its fps, and uncaptioned shots carry the placeholder."""
  root, _ = videos
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    summary = write_source(
      root, tmp_path / "source", fps=8, num_frames=16, max_shots=2, progress=False
    )
  assert summary["videos"] == 2 and summary["num_skipped"] == 0
  entries = read_index(tmp_path / "source")
  assert len(entries) == summary["samples"] >= 4
  assert {e.video for e in entries} == {"videos/a/long.mp4", "videos/b.mp4"}
  assert len({e.name for e in entries}) == len(entries)  # several samples per long video
  for entry in entries:
    assert entry.fps == 8 and sum(s.end - s.start for s in entry.shots) == 16
    assert all(s.caption == PLACEHOLDER_CAPTION for s in entry.shots)
  built = build_dataset(
    tmp_path / "source", tmp_path / "data", num_frames=16, height=16, width=32, max_shots=2, fps=8
  )
  assert built["num_examples"] == len(entries) and built["num_skipped"] == 0


@pytest.mark.subprocess
def test_shots_command_lists_then_writes_captioned_source(videos, tmp_path):
  """The command's main in-process (tests/commands.py; test_cli.py runs its entry points)."""
  root, cuts = videos

  def shots(*args: str) -> str:
    done = run_command(
      "moga_jax.data.shots", "moga_jax.data.shots", ["--videos", str(root), *args], "_define_flags"
    )
    assert done.code == 0, done.err[-3000:]
    return done.out

  rows = [json.loads(line) for line in shots("--list").splitlines()]
  assert {r["video"] for r in rows} == {"a/long.mp4", "b.mp4"}
  assert sum(r["video"] == "b.mp4" for r in rows) == len(cuts["b.mp4"]) + 1
  first = rows[0]
  assert set(first) == {"video", "shot", "start", "end", "seconds"} and first["start"] == 0
  captions = tmp_path / "captions.jsonl"
  captions.write_text(
    "".join(
      json.dumps({"video": r["video"], "shot": r["shot"], "caption": f"shot {r['shot']}"}) + "\n"
      for r in rows
    )
  )
  out = tmp_path / "source"
  shots("--out", str(out), "--captions", str(captions))
  entries = read_index(out)
  assert entries and all(s.caption.startswith("shot ") for e in entries for s in e.shots)
  assert (out / "videos").resolve() == root.resolve()  # a link: nothing copied
