"""Video I/O on real encoded files: round trips at several sizes and rates, seeking, timestamp
resampling (constant and variable frame rates), aspect-preserving fit, and every bad-file case."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from moga_jax.data.video_io import (
  VideoReadError,
  contact_sheet,
  fit_geometry,
  probe_video,
  read_video,
  resize_frames,
  write_mp4,
)

# Frame i of a "counter" video is flat grey at level _BASE + _STEP * i, so a decoded frame says
# which source frame it is (H.264 keeps flat grey within a level or two).
_BASE, _STEP = 10, 7


def _counter(count: int, height: int = 16, width: int = 16) -> np.ndarray:
  levels = _BASE + _STEP * np.arange(count)
  assert levels.max() <= 255
  return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).astype(np.uint8)


def _which(frames: np.ndarray) -> list[int]:
  """The source frame index of each decoded counter frame."""
  means = frames.reshape(len(frames), -1).mean(1)
  return np.round((means - _BASE) / _STEP).astype(int).tolist()


def _write_timed(path, frames, times_s) -> None:
  """An H.264 mp4 whose frame i is shown at times_s[i] (millisecond timestamps: variable rate)."""
  with av.open(os.fspath(path), mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=Fraction(30))
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    stream.codec_context.time_base = Fraction(1, 1000)
    stream.options = {"crf": "10", "x264-params": "log-level=error"}
    for frame, time in zip(frames, times_s, strict=True):
      picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
      picture.pts, picture.time_base = round(time * 1000), Fraction(1, 1000)
      container.mux(stream.encode(picture))
    container.mux(stream.encode(None))


def _moving_blob(times_s: np.ndarray, height: int = 36, width: int = 64) -> np.ndarray:
  """A soft bright blob moving right at 24 px/s over a vertical gradient: smooth, so frames a
  fraction of a frame apart in time differ by little."""
  y, x = np.mgrid[:height, :width].astype(np.float32)
  frames = []
  for t in times_s:
    cx = 8 + 24 * t
    blob = np.exp(-((x - cx) ** 2 + (y - height / 2) ** 2) / (2 * 5.0**2))
    grey = 40 + 120 * y / height + 90 * blob
    frames.append(np.stack([grey, grey * 0.8 + 20, 200 - grey * 0.5], -1))
  return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
  ("height", "width", "fps"), [(18, 22, 4), (36, 64, 24), (64, 36, 30), (48, 48, 23.976)]
)
def test_round_trip_sizes_rates_and_aspects(tmp_path, height, width, fps):
  frames = np.zeros((6, height, width, 3), np.uint8)
  frames[:] = (200, 40, 60)
  top, left = 2 * (height // 8), 2 * (width // 8)  # even: yuv420p shares chroma by 2x2 blocks
  frames[:, top : 3 * top, left : 3 * left] = (20, 180, 220)
  path = write_mp4(tmp_path / "sub" / "a.mp4", frames, fps=fps)
  info = probe_video(path)
  assert (info.height, info.width, info.num_frames) == (height, width, 6)
  assert info.fps == pytest.approx(fps, rel=1e-3)
  video = read_video(path)
  assert video.shape == frames.shape and video.dtype == np.uint8
  assert np.abs(video.astype(int) - frames).mean() < 6
  assert read_video(path, num_frames=2).shape == (2, height, width, 3)


def test_write_mp4_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="even"):
    write_mp4(tmp_path / "a.mp4", np.zeros((2, 17, 16, 3), np.uint8))
  with pytest.raises(TypeError, match="uint8"):
    write_mp4(tmp_path / "a.mp4", np.zeros((2, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match="fps"):
    write_mp4(tmp_path / "a.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=0)
  with pytest.raises(ValueError, match="crf"):
    write_mp4(tmp_path / "a.mp4", np.zeros((2, 16, 16, 3), np.uint8), crf=60)


def test_read_video_rejects_bad_arguments(tmp_path):
  path = write_mp4(tmp_path / "a.mp4", _counter(4))
  for kwargs, name in [
    ({"start_s": -1.0}, "start_s"),
    ({"num_frames": 0}, "num_frames"),
    ({"fps": -3}, "fps"),
    ({"size": (16,)}, "size"),
    ({"size": (0, 8)}, r"size\[0\]"),
    ({"fit": "squash"}, "fit"),
  ]:
    with pytest.raises(ValueError, match=name):
      read_video(path, **kwargs)


def test_seek_reads_exactly_the_asked_frames(tmp_path):
  """A start time in the middle of a long GOP-structured file: the frames come from there on,
  not from the keyframe the seek lands on."""
  path = write_mp4(tmp_path / "c.mp4", _counter(34), fps=10)
  assert _which(read_video(path)) == list(range(34))
  assert _which(read_video(path, start_s=1.3, num_frames=5)) == [13, 14, 15, 16, 17]
  assert _which(read_video(path, start_s=3.2)) == [32, 33]  # ends early: fewer frames
  with pytest.raises(VideoReadError, match=r"no decodable frames from 9\.0 s") as info:
    read_video(path, start_s=9.0)
  assert info.value.kind == "no_frames"


def test_resampling_picks_the_nearest_frame_in_time(tmp_path):
  path = write_mp4(tmp_path / "c.mp4", _counter(30), fps=10)
  assert _which(read_video(path, fps=5)) == list(range(0, 30, 2))
  assert _which(read_video(path, fps=20, num_frames=6)) == [0, 1, 1, 2, 2, 3]  # ties: later
  assert _which(read_video(path, fps=4, start_s=0.5, num_frames=4)) == [5, 8, 10, 13]


def test_variable_frame_rate_comes_out_evenly_spaced(tmp_path):
  times = [0.0, 0.05, 0.3, 0.35, 0.4, 0.9, 1.0, 1.32]
  path = tmp_path / "vfr.mp4"
  _write_timed(path, _counter(len(times)), times)
  got = _which(read_video(path, fps=10))
  # Output frame k is at k / 10 s and shows the source frame nearest in time; the last source
  # frame holds for one frame at the file's average rate.
  count = int(np.ceil((times[-1] + 1 / probe_video(path).fps) * 10 - 1e-6))
  want = [min(range(len(times)), key=lambda i: (abs(times[i] - k / 10), -i)) for k in range(count)]
  assert got == want


def test_60_and_24_fps_of_the_same_motion_give_the_same_frames_at_24(tmp_path):
  fast = write_mp4(tmp_path / "60.mp4", _moving_blob(np.arange(120) / 60), fps=60)
  slow = write_mp4(tmp_path / "24.mp4", _moving_blob(np.arange(48) / 24), fps=24)
  a = read_video(fast, fps=24).astype(int)
  b = read_video(slow, fps=24).astype(int)
  assert a.shape == b.shape == (48, 36, 64, 3)
  # Within encoding error; odd output frames fall between two 60-fps frames (1/120 s apart).
  assert np.abs(a - b).mean() < 2.0, np.abs(a - b).mean()
  # Without resampling the 60-fps clip would run 2.5x slower: frame 40 is far from 24-fps's.
  assert np.abs(read_video(fast)[40].astype(int) - b[40]).mean() > 4 * np.abs(a - b).mean()


@pytest.mark.parametrize(
  ("fit", "want"),
  [("crop", ((32, 57), (0, 12))), ("pad", ((18, 32), (7, 0))), ("stretch", ((32, 32), (0, 0)))],
)
def test_fit_geometry(fit, want):
  assert fit_geometry((36, 64), (32, 32), fit) == want
  with pytest.raises(ValueError, match="fit"):
    fit_geometry((36, 64), (32, 32), "zoom")


def test_fit_crop_and_pad_keep_the_aspect_ratio(tmp_path):
  """A 16:9 frame with red side bands and a centred square: crop to square drops the bands and
  keeps the square square; pad keeps the whole frame between black bars."""
  frames = np.full((2, 36, 64, 3), 128, np.uint8)
  frames[:, :, :8] = frames[:, :, -8:] = (220, 30, 30)
  frames[:, 10:26, 24:40] = (30, 30, 220)
  path = write_mp4(tmp_path / "wide.mp4", frames, fps=8)
  crop = read_video(path, size=(32, 32), fit="crop").astype(int)
  assert np.abs(crop[:, :, :3] - (128, 128, 128)).max() < 12  # the bands are cut off
  blue = (crop[0, ..., 2] > 170) & (crop[0, ..., 0] < 80)
  rows, cols = np.flatnonzero(blue.any(1)), np.flatnonzero(blue.any(0))
  assert abs(len(rows) - len(cols)) <= 1 and 12 <= len(rows) <= 16  # still a square
  pad = read_video(path, size=(32, 32), fit="pad").astype(int)
  assert pad[:, :6].max() < 8 and pad[:, -6:].max() < 8  # black bars above and below
  assert pad[0, 16, 2, 0] > 170  # a red band survives at the left edge
  stretch = read_video(path, size=(32, 32), fit="stretch")
  assert stretch.shape == (2, 32, 32, 3)


def test_bad_files_raise_video_read_error_with_a_kind(tmp_path):
  good = write_mp4(tmp_path / "good.mp4", _counter(20, 32, 32), fps=8)
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(1000))
  (tmp_path / "notes.mp4").write_text("not a video at all\n" * 20)
  data = good.read_bytes()
  (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
  with av.open(os.fspath(tmp_path / "audio.m4a"), mode="w") as container:
    stream = container.add_stream("aac", rate=16000)
    samples = np.zeros((1, 16000), np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = 16000
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  kinds = {}
  for name in ("missing.mp4", "empty.mp4", "junk.mp4", "notes.mp4", "truncated.mp4", "audio.m4a"):
    with pytest.raises(VideoReadError) as info:
      read_video(tmp_path / name)
    assert isinstance(info.value, OSError) and info.value.path.endswith(name)
    kinds[name] = info.value.kind
  assert kinds == {
    "missing.mp4": "missing",
    "empty.mp4": "empty",
    "junk.mp4": "unreadable",
    "notes.mp4": "unreadable",
    "truncated.mp4": "unreadable",
    "audio.m4a": "no_video_stream",
  }
  with pytest.raises(VideoReadError, match="no video stream"):
    probe_video(tmp_path / "audio.m4a")


def test_resize_frames_area_and_bilinear():
  frames = np.zeros((1, 4, 4, 3), np.uint8)
  frames[0, :, 2:] = 200
  frames[0, 0, 0] = 40  # block mean of the top-left 2x2 block is 10
  down = resize_frames(frames, 2, 2)
  np.testing.assert_array_equal(down[0, :, :, 0], [[10, 200], [0, 200]])
  up = resize_frames(np.full((2, 3, 5, 3), 77, np.uint8), 7, 9)
  assert up.shape == (2, 7, 9, 3) and np.all(up == 77)
  with pytest.raises(ValueError, match="height"):
    resize_frames(frames, 0, 2)


def test_contact_sheet_png_size(tmp_path):
  frames = np.random.default_rng(0).integers(0, 255, (10, 16, 12, 3), dtype=np.uint8)
  path = contact_sheet(frames, tmp_path / "sheet.png", columns=4, labels=["a", "b", "c"])
  sheet = np.asarray(Image.open(path).convert("RGB"))
  assert path.suffix == ".png" and sheet.shape == (3 * 16, 4 * 12, 3)
  np.testing.assert_array_equal(sheet[16:32, 12:24], frames[5])  # row 1 is unlabelled...
  assert np.all(sheet[32:, 24:] == 0)  # ...and the two missing frames are black padding
