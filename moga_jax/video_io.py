"""Reading, writing, resizing and previewing uint8 RGB videos held as [F, H, W, 3] arrays.

Encoding goes through imageio's ffmpeg plugin, whose binary ships with imageio-ffmpeg, so no
system ffmpeg or TensorFlow is needed. PIL (a hard dependency of imageio) writes the PNG sheets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as iio
import numpy as np
from PIL import Image, ImageDraw

from pallas_kernels.metadata import cdiv
from pallas_kernels.validation import check_positive_int

__all__ = ["VideoReadError", "contact_sheet", "read_mp4", "resize_frames", "write_mp4"]


class VideoReadError(OSError):
  """A video that is missing, unreadable, corrupt or holds no frames."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"cannot read video {self.path}: {reason}")

  def __reduce__(self):
    # OSError pickles through its args; keep (path, reason) so workers can ship it back.
    return type(self), (self.path, self.reason)


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


def write_mp4(path: str | os.PathLike, frames, fps: float = 8, *, quality: float = 8.0) -> Path:
  """Encodes uint8 [F, H, W, 3] frames as H.264 (yuv420p) and returns the path.

  yuv420p subsamples chroma 2x2, so H and W must be even; macro_block_size=1 stops imageio from
  silently resizing frames to multiples of 16. `quality` is imageio's 1..10 scale (8 ~ crf 10,
  high enough that flat synthetic colours survive).
  """
  frames = _check_frames(frames)
  _, height, width, _ = frames.shape
  if height % 2 or width % 2:
    raise ValueError(
      f"frames height and width must be even for yuv420p H.264, got {height}x{width}"
    )
  if not fps > 0:
    raise ValueError(f"fps must be positive, got {fps}")
  if not 1 <= quality <= 10:
    raise ValueError(f"quality must be in [1, 10], got {quality}")
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with iio.get_writer(
    path,
    format="FFMPEG",
    mode="I",
    fps=fps,
    codec="libx264",
    pixelformat="yuv420p",
    macro_block_size=1,
    quality=quality,
    ffmpeg_log_level="error",
  ) as writer:
    for frame in frames:
      writer.append_data(frame)
  return path


def read_mp4(path: str | os.PathLike, *, max_frames: int | None = None) -> np.ndarray:
  """Decodes a video into uint8 [F, H, W, 3]; raises VideoReadError if it cannot.

  With max_frames, decoding stops after that many frames, so taking a short clip from a long
  video neither decodes nor holds the rest of it.
  """
  if max_frames is not None and (
    isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames <= 0
  ):
    raise ValueError(f"max_frames must be a positive int or None, got {max_frames!r}")
  path = Path(path)
  if not path.is_file():
    raise VideoReadError(path, "no such file")
  if path.stat().st_size == 0:
    raise VideoReadError(path, "file is empty")
  frames = []
  try:
    with iio.get_reader(path, format="FFMPEG") as reader:
      for frame in reader:
        frames.append(np.asarray(frame))
        if max_frames is not None and len(frames) >= max_frames:
          break
    if not frames:
      raise VideoReadError(path, "no decodable frames")
    video = np.stack(frames)  # ValueError if the frame size changes mid-stream
  except VideoReadError:
    raise
  except (OSError, RuntimeError, ValueError, IndexError) as e:
    # ffmpeg reports corrupt containers as OSError("Could not load meta information ...").
    message = str(e).strip()
    reason = message.splitlines()[0] if message else type(e).__name__
    raise VideoReadError(path, f"decoding failed: {reason}") from e
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise VideoReadError(path, f"expected uint8 RGB frames, decoded {video.dtype} {video.shape}")
  return video


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
