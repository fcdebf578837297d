"""Reading, writing, resizing and previewing uint8 RGB videos held as [F, H, W, 3] arrays.

One decoder and encoder: PyAV (`av`, FFmpeg's libraries in-process; its wheels bundle libx264).
`read_video` streams: it seeks to the first wanted frame, decodes only up to the last, resamples
to a frame rate by presentation timestamps (so variable-frame-rate files come out evenly
spaced), and resizes each kept frame as it goes, so memory is bounded by the output whatever the
file's length. PIL writes the PNG contact sheets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Literal, NamedTuple

import av
import numpy as np
from PIL import Image, ImageDraw

from moga_jax.errors import UserError
from pallas_kernels.common import cdiv, check_positive_int

__all__ = [
  "FIT_MODES",
  "VideoInfo",
  "VideoReadError",
  "contact_sheet",
  "fit_geometry",
  "probe_video",
  "read_video",
  "resize_frames",
  "write_mp4",
]

Fit = Literal["crop", "pad", "stretch"]
# How a frame of another aspect ratio is brought to height x width: "crop" scales it to cover
# the target and cuts the centre, "pad" scales it to fit inside and pads with black, "stretch"
# scales each axis on its own (distorts).
FIT_MODES: tuple[str, ...] = ("crop", "pad", "stretch")

# FFmpeg prints errors only (libx264's statistics and the decoders' notes on recoverable damage
# would otherwise go to stderr on every call), through its own callback: routing its logs into
# Python's logging (av.logging.set_level) can deadlock with threaded decoding.
if hasattr(av.logging, "set_libav_level"):
  av.logging.set_libav_level(av.logging.ERROR)

# Seconds under which two times count as equal (timestamps are exact fractions, sums of floats
# are not).
_TIME_EPS = 1e-6


class VideoReadError(UserError, OSError):
  """A video that is missing, unreadable, corrupt, holds no video stream or no frames.

  `kind` names the failure in one word for counting ("missing", "empty", "unreadable",
  "no_video_stream", "no_frames"); `reason` says it for a person.
  """

  def __init__(self, path: str | os.PathLike, reason: str, kind: str = "unreadable"):
    self.path = str(path)
    self.reason = reason
    self.kind = kind
    super().__init__(f"cannot read video {self.path}: {reason}")

  def __reduce__(self):
    # OSError pickles through its args; keep (path, reason, kind) so workers can ship it back.
    return type(self), (self.path, self.reason, self.kind)


class VideoInfo(NamedTuple):
  width: int
  height: int
  fps: float  # the stream's average frame rate (frames / second)
  duration_s: float | None  # None when the container does not say
  num_frames: int | None  # from the container's header, None when it does not say


def pixels_to_unit(frames) -> np.ndarray:
  """uint8 pixels (any shape) -> float32 in [-1, 1], as x / 127.5 - 1: the models' range."""
  return np.asarray(frames).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def unit_to_pixels(video) -> np.ndarray:
  """Model output in [-1, 1] (numpy or jax, any shape) -> uint8 pixels, rounded and clipped."""
  video = np.asarray(video, np.float32)
  return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _check_frames(frames, name: str = "frames") -> np.ndarray:
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise TypeError(f"{name} must be uint8, got dtype {frames.dtype}")
  if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
    raise ValueError(f"{name} must have shape [F, H, W, 3] with F, H, W > 0, got {frames.shape}")
  return frames


def _frame_rate(fps, name: str = "fps") -> Fraction:
  """A positive frame rate as the exact fraction FFmpeg wants (29.97 -> 2997/100)."""
  if isinstance(fps, bool) or not isinstance(fps, int | float | Fraction) or not fps > 0:
    raise ValueError(f"{name} must be a positive number, got {fps!r}")
  if not math.isfinite(fps):
    raise ValueError(f"{name} must be finite, got {fps!r}")
  return Fraction(fps).limit_denominator(100_000)


def write_mp4(path: str | os.PathLike, frames, fps: float = 8, *, crf: int = 10) -> Path:
  """Encodes uint8 [F, H, W, 3] frames as H.264 (yuv420p) at a constant `fps`; returns the path.

  yuv420p subsamples chroma 2x2, so H and W must be even. `crf` is x264's constant rate factor
  (0 lossless .. 51; 10 keeps flat synthetic colours within a few levels).
  """
  frames = _check_frames(frames)
  _, height, width, _ = frames.shape
  if height % 2 or width % 2:
    raise ValueError(
      f"frames height and width must be even for yuv420p H.264, got {height}x{width}"
    )
  rate = _frame_rate(fps)
  if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
    raise ValueError(f"crf must be an int in [0, 51], got {crf!r}")
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(os.fspath(path), mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = {"crf": str(crf), "x264-params": "log-level=error"}
    for index, frame in enumerate(frames):
      picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
      picture.pts, picture.time_base = index, 1 / rate
      container.mux(stream.encode(picture))
    container.mux(stream.encode(None))  # flush the encoder's delayed frames
  return path


def _check_path(path: str | os.PathLike) -> Path:
  path = Path(path)
  if not path.is_file():
    raise VideoReadError(path, "no such file", "missing")
  if path.stat().st_size == 0:
    raise VideoReadError(path, "file is empty", "empty")
  return path


def _open(path: Path):
  """(container, first video stream), or VideoReadError saying why not."""
  try:
    container = av.open(os.fspath(path))
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoReadError(path, f"cannot open: {_first_line(e)}", "unreadable") from e
  if not container.streams.video:
    kinds = sorted({s.type for s in container.streams}) or ["none"]
    container.close()
    raise VideoReadError(path, f"no video stream (streams: {', '.join(kinds)})", "no_video_stream")
  stream = container.streams.video[0]
  stream.thread_type = "AUTO"  # frame and slice threads: decoding is most of the cost
  return container, stream


def _first_line(error: BaseException) -> str:
  message = str(error).strip()
  return message.splitlines()[0] if message else type(error).__name__


def _stream_fps(stream) -> float:
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  return float(rate) if rate else 0.0


def probe_video(path: str | os.PathLike) -> VideoInfo:
  """Size, average frame rate, duration and frame count from the headers (decodes nothing)."""
  path = _check_path(path)
  container, stream = _open(path)
  with container:
    fps = _stream_fps(stream)
    if not fps > 0:
      raise VideoReadError(path, "the video stream has no frame rate", "unreadable")
    if stream.duration is not None and stream.time_base is not None:
      duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
      duration = container.duration / av.time_base
    else:
      duration = None
    width, height = stream.codec_context.width, stream.codec_context.height
    return VideoInfo(width, height, fps, duration, stream.frames or None)


def fit_geometry(
  in_hw: tuple[int, int], out_hw: tuple[int, int], fit: Fit
) -> tuple[tuple[int, int], tuple[int, int]]:
  """((scaled height, width), (top, left)) to bring a frame of in_hw to out_hw by `fit`.

  crop: the scaled frame covers out_hw and out_hw is cut from it at (top, left). pad: the
  scaled frame fits inside out_hw and is placed at (top, left) on black. stretch: scaled to
  out_hw exactly, at (0, 0).
  """
  (h_in, w_in), (h, w) = in_hw, out_hw
  if fit == "stretch":
    return (h, w), (0, 0)
  if fit == "crop":
    scale = max(h / h_in, w / w_in)
    sh, sw = max(h, round(h_in * scale)), max(w, round(w_in * scale))
    return (sh, sw), ((sh - h) // 2, (sw - w) // 2)
  if fit == "pad":
    scale = min(h / h_in, w / w_in)
    sh, sw = min(h, max(1, round(h_in * scale))), min(w, max(1, round(w_in * scale)))
    return (sh, sw), ((h - sh) // 2, (w - sw) // 2)
  raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")


def _to_array(frame, size: tuple[int, int] | None, fit: Fit) -> np.ndarray:
  """One decoded frame as uint8 [H, W, 3]: to RGB, FFmpeg's scaler (area when shrinking), then
  crop or pad. Scaling happens in RGB: scaling the subsampled chroma planes first smears
  colour across small objects' edges (by up to half the range on 32x32 frames)."""
  rgb = frame.reformat(format="rgb24")
  if size is None:
    return rgb.to_ndarray()
  (sh, sw), (top, left) = fit_geometry((frame.height, frame.width), size, fit)
  shrink = sh < frame.height or sw < frame.width
  scaled = rgb.reformat(
    width=sw, height=sh, interpolation="AREA" if shrink else "BILINEAR"
  ).to_ndarray()
  if fit == "pad":
    out = np.zeros((*size, 3), np.uint8)
    out[top : top + sh, left : left + sw] = scaled
    return out
  return np.ascontiguousarray(scaled[top : top + size[0], left : left + size[1]])


def _timed_frames(container, stream, path: Path) -> Iterator[tuple[float, object]]:
  """(presentation time in seconds, frame) in decode order; times fall back to the frame
  count over the average rate where a frame carries no timestamp."""
  fps = _stream_fps(stream) or 1.0
  count = 0
  try:
    for frame in container.decode(stream):
      time = frame.time
      yield (count / fps if time is None else float(time)), frame
      count += 1
  except (av.FFmpegError, OSError, ValueError) as e:
    reason = f"decoding failed after {count} frames: {_first_line(e)}"
    raise VideoReadError(path, reason, "unreadable") from e


def read_video(
  path: str | os.PathLike,
  *,
  start_s: float = 0.0,
  num_frames: int | None = None,
  fps: float | None = None,
  size: tuple[int, int] | None = None,
  fit: Fit = "crop",
) -> np.ndarray:
  """Decodes a video (or a piece of it) into uint8 [F, H, W, 3]; VideoReadError if it cannot.

  start_s: where to start, in seconds of presentation time (seeks to the keyframe before it,
    then decodes forward). num_frames: at most this many output frames (None: to the end).
  fps: None keeps every decoded frame from start_s on; a rate resamples by timestamps: output
    frame k shows the source frame nearest in time to start_s + k / fps (ties to the later),
    so a 60-fps and a 24-fps file of the same motion give the same frames at 24 fps, and
    variable frame rates come out evenly spaced.
  size: (height, width) of the output, reached by `fit` (see FIT_MODES); None keeps the source
    size. Frames are resized one at a time as they are kept.
  Returns fewer than num_frames frames when the video ends first; raises when none are left.
  """
  path = _check_path(path)
  if isinstance(start_s, bool) or not isinstance(start_s, int | float) or not start_s >= 0:
    raise ValueError(f"start_s must be a number >= 0, got {start_s!r}")
  if num_frames is not None:
    num_frames = check_positive_int("num_frames", num_frames)
  rate = None if fps is None else float(_frame_rate(fps))
  if size is not None:
    if not (isinstance(size, tuple | list) and len(size) == 2):
      raise ValueError(f"size must be (height, width) or None, got {size!r}")
    size = (check_positive_int("size[0]", size[0]), check_positive_int("size[1]", size[1]))
  if fit not in FIT_MODES:
    raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")

  container, stream = _open(path)
  with container:
    native = _stream_fps(stream) or 1.0
    if start_s > 0 and stream.time_base:
      try:
        container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
      except (av.FFmpegError, OSError) as e:
        raise VideoReadError(path, f"cannot seek to {start_s} s: {_first_line(e)}") from e
    frames = _collect(
      _timed_frames(container, stream, path), start_s, num_frames, rate, native, size, fit
    )
  if not frames:
    where = f" from {start_s} s" if start_s else ""
    raise VideoReadError(path, f"no decodable frames{where}", "no_frames")
  shapes = {f.shape for f in frames}
  if len(shapes) > 1:
    raise VideoReadError(path, f"the frame size changes mid-stream: {sorted(shapes)}")
  return np.stack(frames)


def _collect(timed, start_s, num_frames, rate, native, size, fit) -> list[np.ndarray]:
  """Picks the output frames from a (time, frame) stream; see read_video."""
  limit = math.inf if num_frames is None else num_frames
  out: list[np.ndarray] = []
  if rate is None:
    for time, frame in timed:
      if time >= start_s - 0.5 / native:  # frames before the start come from the seek
        out.append(_to_array(frame, size, fit))
        if len(out) >= limit:
          break
    return out

  def target() -> float:  # the time output frame len(out) shows
    return start_s + len(out) / rate

  previous_time, previous_frame = 0.0, None

  def emit_until(end: float) -> None:  # the previous frame, for each output time before end
    array = None  # converted once, however many output frames repeat it
    while len(out) < limit and target() < end - _TIME_EPS:
      if array is None:
        array = _to_array(previous_frame, size, fit)
      out.append(array)

  for time, frame in timed:
    if previous_frame is not None:
      # Output times before the midpoint of two source frames show the earlier one; a time on
      # the midpoint (within float noise) shows the later one.
      emit_until((previous_time + time) / 2)
      if len(out) >= limit:
        return out
    previous_time, previous_frame = time, frame
  if previous_frame is not None:  # the last frame holds for one frame at the average rate
    emit_until(previous_time + 1 / native)
  return out


def _resize_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] weights: box (area) averaging to shrink, bilinear to enlarge.

  Area averaging keeps thin details from aliasing when shrinking, which plain bilinear
  sampling does not; both use pixel-centre alignment so the image does not shift.
  """
  if size_out < size_in:
    scale = size_in / size_out
    lo = np.arange(size_out)[:, None] * scale
    hi = lo + scale
    edges = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(hi, edges + 1) - np.maximum(lo, edges), 0.0, None)
    return overlap / scale
  centres = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
  centres = np.clip(centres, 0.0, size_in - 1)
  left = np.floor(centres).astype(np.int64)
  right = np.minimum(left + 1, size_in - 1)
  frac = centres - left
  weights = np.zeros((size_out, size_in))
  rows = np.arange(size_out)
  np.add.at(weights, (rows, left), 1.0 - frac)
  np.add.at(weights, (rows, right), frac)
  return weights


def resize_frames(frames, height: int, width: int) -> np.ndarray:
  """Resizes uint8 [F, H, W, 3] to [F, height, width, 3] (area down, bilinear up), no crop.

  The aspect ratio is not preserved: frames are stretched to exactly height x width.
  """
  frames = _check_frames(frames)
  height, width = check_positive_int("height", height), check_positive_int("width", width)
  _, h_in, w_in, _ = frames.shape
  if (h_in, w_in) == (height, width):
    return frames.copy()
  rows = _resize_matrix(h_in, height).astype(np.float32)
  cols = _resize_matrix(w_in, width).astype(np.float32)
  out = np.einsum("yh,fhwc,xw->fyxc", rows, frames.astype(np.float32), cols, optimize=True)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _draw_row_labels(image: Image.Image, labels: Sequence[str], row_height: int) -> None:
  draw = ImageDraw.Draw(image)
  for row, text in enumerate(labels):
    # A dark outline keeps the text readable on any background colour.
    draw.text(
      (2, row * row_height + 1),
      str(text),
      fill=(255, 255, 255),
      stroke_width=1,
      stroke_fill=(0, 0, 0),
    )


def contact_sheet(
  frames, path: str | os.PathLike, *, columns: int = 8, labels: Sequence[str] | None = None
) -> Path:
  """Writes frames as a PNG grid (row-major, `columns` wide, black padding) and returns the path.

  The sheet is exactly (rows * H) x (columns * W) with rows = ceil(F / columns), where columns
  is capped at F. `labels`, at most one per row, are drawn onto the top left of their row.
  """
  frames = _check_frames(frames)
  columns = check_positive_int("columns", columns)
  num, height, width, _ = frames.shape
  columns = min(columns, num)
  rows = cdiv(num, columns)
  if labels is not None:
    if isinstance(labels, str):
      raise TypeError("labels must be a sequence of strings, one per row, got a single str")
    labels = list(labels)
    if len(labels) > rows:
      raise ValueError(f"labels has {len(labels)} entries but the sheet has only {rows} rows")
  grid = np.zeros((rows * columns, height, width, 3), np.uint8)
  grid[:num] = frames
  sheet = grid.reshape(rows, columns, height, width, 3).transpose(0, 2, 1, 3, 4)
  sheet = np.ascontiguousarray(sheet.reshape(rows * height, columns * width, 3))
  image = Image.fromarray(sheet)
  if labels:
    _draw_row_labels(image, labels, height)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path, format="PNG")
  return path
