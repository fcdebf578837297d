"""Data layer: video I/O, synthetic videos, the TF-free TFDS builder and the grain loader."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from moga_jax.data import (
  SkippedVideoWarning,
  build_dataset,
  decode_captions,
  encode_captions,
  find_dataset_dir,
  make_loader,
  make_synthetic_videos,
  read_index,
)
from moga_jax.data.synthetic import COLOURS, DIRECTIONS, SHAPES
from moga_jax.data.video_io import read_video, resize_frames, write_mp4

NUM_VIDEOS, SHOTS, FRAMES_PER_SHOT = 6, 2, 4
NUM_FRAMES = SHOTS * FRAMES_PER_SHOT
SIZE, MAX_SHOTS, CAPTION_LEN = 16, 3, 64


# Module fixtures (made videos) are built once: `make test` runs xdist with --dist loadgroup.
pytestmark = pytest.mark.xdist_group("data")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """Six synthetic 32x32 videos, plus index entries for one corrupt and one missing file."""
  out = make_synthetic_videos(
    tmp_path_factory.mktemp("source"),
    NUM_VIDEOS,
    shots=SHOTS,
    frames_per_shot=FRAMES_PER_SHOT,
    height=32,
    width=32,
    seed=7,
  )
  (out / "videos" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
  bad = [
    {"video": f"videos/{n}.mp4", "shots": [{"start": 0, "end": 8, "caption": "x"}]}
    for n in ("corrupt", "missing")
  ]
  with (out / "captions.jsonl").open("a") as f:
    f.writelines(json.dumps(entry) + "\n" for entry in bad)
  return out


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
  """(summary, warnings) of building the source at 16x16."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    summary = build_dataset(
      source,
      tmp_path_factory.mktemp("data"),
      num_frames=NUM_FRAMES,
      height=SIZE,
      width=SIZE,
      max_shots=MAX_SHOTS,
      caption_len=CAPTION_LEN,
    )
  return summary, [w for w in caught if issubclass(w.category, SkippedVideoWarning)]


def _loader(summary, **kw):
  kw = {"batch_size": 2, "seed": 5, **kw}
  return make_loader(summary["dataset_dir"], **kw)


# --- synthetic videos -----------------------------------------------------------------------------


def test_synthetic_videos_structure_and_visible_cut(source):
  entries = read_index(source)
  assert [e.video for e in entries[:NUM_VIDEOS]] == [
    f"videos/{i:05d}.mp4" for i in range(NUM_VIDEOS)
  ]
  for entry in entries[:NUM_VIDEOS]:
    assert [(s.start, s.end) for s in entry.shots] == [(0, 4), (4, 8)]
    video = read_video(source / entry.video)
    assert video.shape == (NUM_FRAMES, 32, 32, 3)
    backgrounds = []
    for shot in entry.shots:
      words = shot.caption.split()
      # "a <colour> <shape> moving <direction> on a <colour> background"
      assert words[1] in COLOURS and words[2] in SHAPES and words[4] in DIRECTIONS
      assert words[7] in COLOURS and words[1] != words[7]
      backgrounds.append(words[7])
      # The background covers most pixels, so the per-frame median is its colour.
      median = np.median(video[shot.start : shot.end].reshape(shot.end - shot.start, -1, 3), 1)
      assert np.abs(median - COLOURS[words[7]]).max() <= 24
    assert backgrounds[0] != backgrounds[1]
    means = video.reshape(NUM_FRAMES, -1, 3).mean(1)
    jumps = np.abs(np.diff(means, axis=0)).sum(-1)
    assert (
      jumps[FRAMES_PER_SHOT - 1] > 40
      and jumps[FRAMES_PER_SHOT - 1] > 3 * np.delete(jumps, FRAMES_PER_SHOT - 1).max()
    )


def test_synthetic_videos_are_deterministic(tmp_path):
  a = make_synthetic_videos(tmp_path / "a", 2, frames_per_shot=2, height=16, width=16, seed=3)
  b = make_synthetic_videos(tmp_path / "b", 2, frames_per_shot=2, height=16, width=16, seed=3)
  c = make_synthetic_videos(tmp_path / "c", 2, frames_per_shot=2, height=16, width=16, seed=4)
  index = [(d / "captions.jsonl").read_text() for d in (a, b, c)]
  assert index[0] == index[1] != index[2]
  np.testing.assert_array_equal(
    read_video(a / "videos/00001.mp4"), read_video(b / "videos/00001.mp4")
  )


# --- index and captions ---------------------------------------------------------------------------


def test_read_index_reports_bad_lines(tmp_path):
  (tmp_path / "captions.jsonl").write_text('{"video": "a.mp4", "shots": []}\n')
  with pytest.raises(ValueError, match=r"captions.jsonl:1: \"shots\""):
    read_index(tmp_path)
  (tmp_path / "captions.jsonl").write_text(
    '\n{"video": "a.mp4", "shots": [{"start": 3, "end": 2, "caption": "x"}]}\n'
  )
  with pytest.raises(ValueError, match=r"captions\.jsonl:2: .*start < end"):
    read_index(tmp_path)
  with pytest.raises(ValueError, match=r"no captions\.jsonl"):
    read_index(tmp_path / "nowhere")


def test_read_index_samples_of_one_video(tmp_path):
  """A long video may give several samples (named video#k) at one fps; their spans must not
  overlap."""

  def line(start, end, fps=8):
    shots = [{"start": start, "end": end, "caption": "x"}]
    return json.dumps({"video": "long.mp4", "fps": fps, "shots": shots}) + "\n"

  index = tmp_path / "captions.jsonl"
  index.write_text(
    line(20, 36)
    + line(0, 16)
    + json.dumps({"video": "b.mp4", "shots": [{"start": 0, "end": 4, "caption": "y"}]})
    + "\n"
  )
  entries = read_index(tmp_path)
  assert [e.name for e in entries] == ["long.mp4#0", "long.mp4#1", "b.mp4"]
  assert [e.fps for e in entries] == [8.0, 8.0, None]
  index.write_text(line(0, 16) + line(10, 30))
  with pytest.raises(ValueError, match=r"captions\.jsonl:2: this sample of long\.mp4 overlaps"):
    read_index(tmp_path)
  index.write_text(line(0, 16) + line(20, 30, fps=24))
  with pytest.raises(ValueError, match="different fps"):
    read_index(tmp_path)
  index.write_text(line(0, 16, fps=-1))
  with pytest.raises(ValueError, match=r'"fps" must be a positive number'):
    read_index(tmp_path)


def test_builder_reads_shots_at_the_configs_fps_and_skips_gaps(tmp_path):
  """A 24-fps counter video (frame i is grey level 3 i) indexed in frames at 8 fps, with a gap
  between two shots: the clip holds the shots' frames only, resampled to 8 fps."""
  levels = 3 * np.arange(80)
  frames = np.broadcast_to(levels[:, None, None, None], (80, 16, 16, 3)).astype(np.uint8)
  source = tmp_path / "source"
  write_mp4(source / "count.mp4", frames, fps=24)
  shots = [{"start": 2, "end": 5, "caption": "a"}, {"start": 9, "end": 14, "caption": "b"}]
  (source / "captions.jsonl").write_text(
    json.dumps({"video": "count.mp4", "fps": 8, "shots": shots}) + "\n"
  )
  summary = build_dataset(source, tmp_path / "data", num_frames=8, height=8, width=8, fps=8)
  import tensorflow_datasets as tfds

  record = tfds.builder_from_directory(summary["dataset_dir"]).as_data_source("train")[0]
  which = np.round(record["video"].reshape(8, -1).mean(1) / 3).astype(int)
  np.testing.assert_array_equal(which, [6, 9, 12, 27, 30, 33, 36, 39])  # 24-fps frames 3 k
  np.testing.assert_array_equal(record["shot_bounds"][:2], [[0, 3], [3, 8]])


def _data_config(source, **overrides):
  """A config.data for prepare_data over 2-shot 16x16 synthetic clips in `source`."""
  from ml_collections import ConfigDict

  fields = dict(
    source_dir=str(source),
    dataset_dir="",
    shots=2,
    max_shots=2,
    frames_per_shot=2,
    height=16,
    width=16,
    fps=8,
    caption_len=48,
    synthetic_videos=2,
    subject_scale=0.3,
    fit="crop",
    allow_placeholder_captions=False,
  )
  return ConfigDict({**fields, **overrides})


def test_prepare_data_refuses_placeholder_captions(tmp_path):

  from moga_jax.data.index import PLACEHOLDER_CAPTION
  from moga_jax.data.prepare import prepare_data

  source = make_synthetic_videos(tmp_path / "src", 2, frames_per_shot=2, height=16, width=16)
  index = source / "captions.jsonl"
  index.write_text(
    "\n".join(
      json.dumps({**row, "shots": [{**s, "caption": PLACEHOLDER_CAPTION} for s in row["shots"]]})
      for row in map(json.loads, index.read_text().splitlines())
    )
  )
  cfg = _data_config(source, allow_placeholder_captions=False)
  with pytest.raises(ValueError, match="allow_placeholder_captions=True"):
    prepare_data(cfg, tmp_path / "run")
  cfg.allow_placeholder_captions = True
  assert prepare_data(cfg, tmp_path / "run").is_dir()


def test_captions_truncate_on_character_boundary():
  rows = encode_captions(["héllo", "ab"], rows=3, length=2)
  assert rows.shape == (3, 2) and rows.dtype == np.uint8
  assert decode_captions(rows, 2) == ["h", "ab"]  # "é" is 2 bytes and would not fit whole
  assert decode_captions(rows) == ["h", "ab", ""]


# --- builder --------------------------------------------------------------------------------------


def test_builder_round_trip(built, source):
  summary, _ = built
  assert summary["examples"] == {"train": NUM_VIDEOS} and summary["num_examples"] == NUM_VIDEOS
  assert not summary["reused"] and "tensorflow" not in sys.modules
  import tensorflow_datasets as tfds

  records = tfds.builder_from_directory(summary["dataset_dir"]).as_data_source(split="train")
  expected = {e.video: e for e in read_index(source)}
  assert len(records) == NUM_VIDEOS
  seen = set()
  for i in range(len(records)):
    record = records[i]
    name = record["name"].decode()
    seen.add(name)
    assert record["video"].shape == (NUM_FRAMES, SIZE, SIZE, 3)
    assert record["video"].dtype == np.uint8
    assert record["captions"].shape == (MAX_SHOTS, CAPTION_LEN)
    assert record["captions"].dtype == np.uint8
    assert record["shot_bounds"].dtype == np.int32 and int(record["num_shots"]) == SHOTS
    np.testing.assert_array_equal(record["shot_bounds"], [[0, 4], [4, 8], [0, 0]])
    shots = expected[name].shots
    assert decode_captions(record["captions"], record["num_shots"]) == [s.caption for s in shots]
    # The stored clip is the source video resized from 32x32 to 16x16 as it was decoded (by
    # FFmpeg's area scaler, in RGB), which is the 2x2 block mean up to rounding.
    decoded = read_video(source / name, size=(SIZE, SIZE))
    np.testing.assert_array_equal(record["video"], decoded)
    block_mean = resize_frames(read_video(source / name), SIZE, SIZE).astype(int)
    assert np.abs(record["video"].astype(int) - block_mean).max() <= 1
  assert seen == {f"videos/{i:05d}.mp4" for i in range(NUM_VIDEOS)}


def test_builder_skips_corrupt_and_missing_videos_with_warning(built):
  summary, caught = built
  assert summary["num_skipped"] == 2
  reasons = {s["video"]: s["reason"] for s in summary["skipped"]}
  assert reasons.keys() == {"videos/corrupt.mp4", "videos/missing.mp4"}
  assert reasons["videos/missing.mp4"] == "no such file"
  assert summary["skipped_by_kind"] == {"missing": 1, "unreadable": 1}
  messages = [str(w.message) for w in caught]
  for video in reasons:
    assert any(video in m for m in messages), messages
  # The summary also lives next to the data, for later inspection.
  on_disk = json.loads((Path(summary["dataset_dir"]) / "build_summary.json").read_text())
  assert on_disk["skipped"] == summary["skipped"]


def test_builder_counts_every_bad_file_kind(tmp_path):
  """Zero-length, truncated, junk, audio-only, too short and missing files are skipped, named
  in warnings and counted by kind in build_summary.json; the good video is built."""
  import av

  source = make_synthetic_videos(tmp_path / "src", 2, frames_per_shot=4, height=16, width=16)
  videos = source / "videos"
  good = (videos / "00000.mp4").read_bytes()
  (videos / "empty.mp4").write_bytes(b"")
  (videos / "truncated.mp4").write_bytes(good[: len(good) // 2])
  (videos / "junk.mp4").write_bytes(np.random.default_rng(1).bytes(3000))
  with av.open(str(videos / "audio.m4a"), mode="w") as container:
    stream = container.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(
      np.zeros((1, 8000), np.float32), format="fltp", layout="mono"
    )
    frame.sample_rate = 16000
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  write_mp4(videos / "short.mp4", np.zeros((3, 16, 16, 3), np.uint8))
  names = ["empty.mp4", "truncated.mp4", "junk.mp4", "audio.m4a", "short.mp4", "missing.mp4"]
  with (source / "captions.jsonl").open("a") as f:
    for name in names:
      shots = [{"start": 0, "end": 8, "caption": "x"}]
      f.write(json.dumps({"video": f"videos/{name}", "shots": shots}) + "\n")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    summary = build_dataset(source, tmp_path / "data", num_frames=8, height=16, width=16)
  assert summary["num_examples"] == 2 and summary["num_skipped"] == len(names)
  assert summary["skipped_by_kind"] == {
    "empty": 1,
    "missing": 1,
    "no_video_stream": 1,
    "too_short": 1,
    "unreadable": 2,
  }
  messages = " ".join(str(w.message) for w in caught)
  assert all(f"videos/{name}" in messages for name in names)
  on_disk = json.loads((Path(summary["dataset_dir"]) / "build_summary.json").read_text())
  assert on_disk["skipped_by_kind"] == summary["skipped_by_kind"]


def test_builder_clips_shots_reuses_and_refuses_other_sources(source, tmp_path):
  kw = {"num_frames": 6, "height": SIZE, "width": SIZE, "max_shots": 2, "caption_len": 8}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", SkippedVideoWarning)
    summary = build_dataset(source, tmp_path, **kw)
    assert build_dataset(source, tmp_path, **kw)["reused"]
    rebuilt = build_dataset(source, tmp_path, overwrite=True, **kw)  # over a finished one
    assert not rebuilt["reused"] and rebuilt["num_examples"] == summary["num_examples"]
  import tensorflow_datasets as tfds

  record = tfds.builder_from_directory(summary["dataset_dir"]).as_data_source("train")[0]
  assert record["video"].shape == (6, SIZE, SIZE, 3)
  np.testing.assert_array_equal(record["shot_bounds"], [[0, 4], [4, 6]])  # second shot cut at 6
  assert all(len(c) <= 8 for c in decode_captions(record["captions"]))

  other = shutil.copytree(source, tmp_path / "other")
  with pytest.raises(ValueError, match="was built from"):
    build_dataset(other, tmp_path, **kw)


def test_builder_fails_clearly_when_every_video_is_unusable(source, tmp_path):
  with (
    warnings.catch_warnings(record=True) as caught,
    pytest.raises(ValueError, match="no usable videos"),
  ):
    warnings.simplefilter("always")
    build_dataset(source, tmp_path, num_frames=NUM_FRAMES + 1, height=SIZE, width=SIZE)
  too_short = [w for w in caught if "too short: 8 frames < num_frames=9" in str(w.message)]
  assert len(too_short) == NUM_VIDEOS
  assert not list(tmp_path.glob("*/*/*/dataset_info.json"))  # nothing half-built is left


# --- loader ---------------------------------------------------------------------------------------


def test_loader_batch_format(built):
  summary, _ = built
  batch = next(_loader(summary))
  assert set(batch) == {"video", "captions", "shot_bounds", "num_shots"}
  assert batch["video"].shape == (2, NUM_FRAMES, SIZE, SIZE, 3)
  assert batch["video"].dtype == np.float32
  assert -1.0 <= batch["video"].min() < batch["video"].max() <= 1.0
  assert batch["captions"].shape == (2, MAX_SHOTS, CAPTION_LEN)
  assert batch["captions"].dtype == np.uint8
  assert batch["shot_bounds"].shape == (2, MAX_SHOTS, 2)
  assert batch["shot_bounds"].dtype == np.int32
  assert batch["num_shots"].shape == (2,) and batch["num_shots"].dtype == np.int32


def test_loader_pixels_are_the_clips_colours_in_minus_one_to_one(built):
  """Kills a loader that scales to [0, 1] (or forgets to scale): every frame's background, its
  median pixel, is a palette colour c as c / 127.5 - 1, up to H.264's error."""
  summary, _ = built
  video = next(_loader(summary))["video"]
  palette = np.array(list(COLOURS.values()), np.float32) / 127.5 - 1.0
  medians = np.median(video.reshape(*video.shape[:2], -1, 3), axis=2)  # [B, F, 3]
  nearest = np.abs(medians[..., None, :] - palette).max(-1).min(-1)
  assert (nearest < 0.08).all(), nearest.max()


def test_loader_pixels_equal_the_mp4_decoded_directly(built, source):
  """The loader's clip is the source mp4 decoded, cut to the clip's frames, area-resized to the
  config's size and mapped to [-1, 1] as x / 127.5 - 1. Kills a loader that reads another clip,
  flips or transposes frames, drops the resize or scales differently."""
  summary, _ = built
  batch = next(_loader(summary, include_name=True))
  for video, name in zip(batch["video"], batch["name"], strict=True):
    frames = read_video(source / name.decode(), num_frames=NUM_FRAMES, size=(SIZE, SIZE))
    want = frames.astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(video, want, rtol=0, atol=1e-6, err_msg=name.decode())


def test_loader_resumes_exactly(built):
  summary, _ = built
  reference = _loader(summary)
  for _ in range(3):
    next(reference)
  state = reference.get_state()
  expected = [next(reference) for _ in range(5)]  # crosses epoch boundaries (3 batches/epoch)
  resumed = _loader(summary)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_loader_epochs_and_shards(built):
  summary, _ = built
  one_epoch = list(_loader(summary, num_epochs=1, include_name=True))
  assert len(one_epoch) == NUM_VIDEOS // 2
  names = [n for b in one_epoch for n in b["name"]]
  assert len(names) == len(set(names)) == NUM_VIDEOS
  shards = [
    [
      n
      for b in _loader(
        summary, batch_size=1, num_epochs=1, include_name=True, shard_index=i, shard_count=2
      )
      for n in b["name"]
    ]
    for i in range(2)
  ]
  assert len(shards[0]) == len(shards[1]) == NUM_VIDEOS // 2
  assert not set(shards[0]) & set(shards[1])
  assert set(shards[0]) | set(shards[1]) == set(names)


def test_loader_shards_make_up_the_same_global_batches(built):
  """Multi-process data: process i's batches are rows [i*b, (i+1)*b) of the global batches
  a single process with batch b * count reads, so losses do not depend on the process count."""
  summary, _ = built
  whole = list(_loader(summary, batch_size=4, num_epochs=2, include_name=True))
  parts = [
    list(
      _loader(summary, batch_size=2, num_epochs=2, include_name=True, shard_index=i, shard_count=2)
    )
    for i in range(2)
  ]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 2 * NUM_VIDEOS // 4
  for step, batch in enumerate(whole):
    for key in batch:
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
      np.testing.assert_array_equal(joined, batch[key], err_msg=f"step {step}, {key}")


def test_loader_errors(built, tmp_path):
  summary, _ = built
  with pytest.raises(ValueError, match="no prepared dataset"):
    make_loader(tmp_path, batch_size=1, seed=0)
  # The data_dir given to build_dataset works too when it holds a single dataset.
  data_dir = Path(summary["dataset_dir"]).parents[2]
  assert find_dataset_dir(data_dir) == Path(summary["dataset_dir"])
  with pytest.raises(ValueError, match="split 'validation'"):
    _loader(summary, split="validation")
  with pytest.raises(ValueError, match="shard_index"):
    _loader(summary, shard_index=2, shard_count=2)
  with pytest.raises(TypeError, match="batch_size"):
    _loader(summary, batch_size=2.0)


def test_prepare_data_keeps_sibling_sources_apart(tmp_path):
  """Two sources in one folder (e.g. two versions of a synthetic set) get two datasets; the
  second must not be handed the first one's prepared clips."""

  from moga_jax.data.prepare import prepare_data
  from moga_jax.data.synthetic import make_synthetic_videos

  prepared = []
  for name, seed in (("set_a", 1), ("set_b", 2)):
    source = make_synthetic_videos(
      tmp_path / name, 2, frames_per_shot=2, height=16, width=16, seed=seed
    )
    cfg = _data_config(source)
    prepared.append(prepare_data(cfg, tmp_path / "runs" / name))
  assert prepared[0] != prepared[1]
  assert "set_a" in str(prepared[0]) and "set_b" in str(prepared[1])
  # One dataset_dir named for both: the second source is refused by name, not fed set_a's clips.
  cfg.dataset_dir = str(prepared[0])
  with pytest.raises(ValueError, match=r"was built from .*set_a, not from config.data.source_dir"):
    prepare_data(cfg, tmp_path / "runs" / "set_b")


@pytest.mark.parametrize(
  ("value", "error", "match"),
  [
    (0.5, ValueError, r"subject_scale must be in \(0, 0.5\).*got 0.5"),
    (0.0, ValueError, r"subject_scale must be in \(0, 0.5\)"),
    ("big", TypeError, r"subject_scale must be a float in \(0, 0.5\), got str"),
    (True, TypeError, r"got bool"),
  ],
)
def test_subject_scale_is_checked(tmp_path, value, error, match):
  from moga_jax.data.synthetic import make_synthetic_videos

  with pytest.raises(error, match=match):
    make_synthetic_videos(tmp_path, 1, subject_scale=value)


def test_subject_scale_sets_the_subjects_size(tmp_path):
  from moga_jax.reproduction.consistency_data import render_clip

  shots = [dict(start=0, end=2, background="red", colour="blue", shape="square", direction="left")]
  small = render_clip(shots, rng=0, subject_scale=0.15)[1].sum()
  large = render_clip(shots, rng=0, subject_scale=0.3)[1].sum()
  assert 3.5 < large / small < 4.5  # area ~ radius^2
