"""Video data throughput: decoding samples, building the dataset, loading batches; table + JSON.

  python benchmarks/data.py --config configs/data_bench.py [--config.videos=8]

For each target shape (configs/data_bench.py: the tiny and the Wan 480p clips) it times:
  decode: one sample per source video through moga_jax.data.video_io.read_video (seek, decode,
    resample to the shape's fps, aspect-preserving resize and crop), in this process and in
    grain worker processes (worker start-up included);
  build: moga_jax.data.build_dataset over all videos (decode + array_record writes);
  load: make_loader batches of one sample from the built dataset (uint8 -> float32), in this
    process and with grain workers, after one warm-up batch.
"Frames/s" counts output frames (at the shape's size and fps); the source frames decoded per
second are higher by source_fps / fps. Numbers are for this machine only: decoding scales with
the source's resolution and codec, not the target shape.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
from absl import app
from ml_collections import config_flags

from moga_jax.cli.logs import quiet_libraries

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  str(Path(__file__).parents[1] / "configs" / "data_bench.py"),
  "Benchmark config file, with a preset after the colon.",
)

_START_S = 0.5  # each sample starts here: the read seeks instead of starting at frame 0


def _panning_video(rng, frames: int, height: int, width: int) -> np.ndarray:
  """A smooth colour field with fine texture, panning 2 px per frame (a camera move)."""
  span = width + 2 * frames
  coarse = rng.random((6, 10, 3)).astype(np.float32)
  ys = np.linspace(0, coarse.shape[0] - 1.001, height)
  xs = np.linspace(0, coarse.shape[1] - 1.001, span)
  y0, x0 = ys.astype(int), xs.astype(int)
  fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
  bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
  field = 200 * (top * (1 - fy) + bottom * fy)
  field += rng.normal(0, 12, (height, span, 1)).astype(np.float32)  # texture the codec must keep
  picture = np.clip(field + 20, 0, 255).astype(np.uint8)
  return np.stack([picture[:, 2 * t : 2 * t + width] for t in range(frames)])


def _make_sources(c, source: Path) -> list[Path]:
  """c.videos panning videos plus a captions.jsonl: two shots from _START_S to the end."""
  from moga_jax.data.video_io import write_mp4

  frames = round(c.source_seconds * c.source_fps)
  stamp = source / f"made_{c.videos}x{c.source_height}x{c.source_width}_{frames}f.json"
  paths = [source / f"video_{i:02d}.mp4" for i in range(c.videos)]
  if stamp.exists() and all(p.exists() for p in paths):
    return paths
  shutil.rmtree(source, ignore_errors=True)
  rng = np.random.default_rng(0)
  first, middle = round(_START_S * c.source_fps), frames // 2
  lines = []
  for path in paths:
    write_mp4(
      path, _panning_video(rng, frames, c.source_height, c.source_width), c.source_fps, crf=23
    )
    shots = [
      {"start": first, "end": middle, "caption": "a panning shot"},
      {"start": middle, "end": frames, "caption": "the pan goes on"},
    ]
    lines.append(json.dumps({"video": path.name, "shots": shots}) + "\n")
  (source / "captions.jsonl").write_text("".join(lines))
  stamp.write_text(json.dumps({"videos": c.videos, "frames": frames}) + "\n")
  return paths


class _Decode:
  """One sample of a shape from a path (a picklable callable for grain workers)."""

  def __init__(self, shape):
    self.shape = dict(shape)

  def __call__(self, path: str) -> int:
    from moga_jax.data.video_io import read_video

    s = self.shape
    video = read_video(
      path,
      start_s=_START_S,
      num_frames=s["num_frames"],
      fps=s["fps"],
      size=(s["height"], s["width"]),
      fit="crop",
    )
    return len(video)


def _time_decode(paths: list[Path], shape, workers: int) -> float:
  import grain

  decode = _Decode(shape)
  start = time.perf_counter()
  if workers == 0:
    counts = [decode(str(p)) for p in paths]
  else:
    dataset = grain.MapDataset.source([str(p) for p in paths]).map(decode).to_iter_dataset()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    counts = list(dataset)
  seconds = time.perf_counter() - start
  if counts != [shape.num_frames] * len(paths):
    raise RuntimeError(f"decoded {counts} frames, wanted {shape.num_frames} per sample")
  return seconds


def _time_loader(dataset_dir: str, batches: int, workers: int) -> float:
  from moga_jax.data import make_loader

  loader = make_loader(dataset_dir, batch_size=1, seed=0, worker_count=workers)
  next(loader)  # warm-up: workers start, first reads
  start = time.perf_counter()
  for _ in range(batches):
    next(loader)
  return time.perf_counter() - start


def _row(stage: str, shape, workers, samples: int, seconds: float) -> dict:
  return {
    "stage": stage,
    "shape": shape.name,
    "clip": f"{shape.num_frames}x{shape.height}x{shape.width}@{shape.fps:g}",
    "workers": workers,
    "samples": samples,
    "seconds": round(seconds, 3),
    "samples_per_s": round(samples / seconds, 3),
    "frames_per_s": round(samples * shape.num_frames / seconds, 1),
  }


def main(argv) -> None:
  del argv
  quiet_libraries()
  c = _CONFIG.value
  import warnings

  from moga_jax.data import build_dataset

  workdir = Path(c.workdir)
  print(f"making {c.videos} source videos ({c.source_height}p, {c.source_fps:g} fps) ...")
  paths = _make_sources(c, workdir / "source")
  rows = []
  for shape in c.shapes:
    for workers in c.workers:
      rows.append(_row("decode", shape, workers, len(paths), _time_decode(paths, shape, workers)))
      print(rows[-1])
    target = workdir / f"prepared_{shape.name}"
    start = time.perf_counter()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      summary = build_dataset(
        workdir / "source",
        target,
        num_frames=shape.num_frames,
        height=shape.height,
        width=shape.width,
        max_shots=2,
        fps=shape.fps,
        overwrite=True,
      )
    if summary["num_examples"] != len(paths):
      raise RuntimeError(f"built {summary['num_examples']} examples of {len(paths)}: {summary}")
    rows.append(_row("build", shape, 0, len(paths), time.perf_counter() - start))
    print(rows[-1])
    for workers in c.workers:
      seconds = _time_loader(summary["dataset_dir"], c.loader_batches, workers)
      rows.append(_row("load", shape, workers, c.loader_batches, seconds))
      print(rows[-1])

  header = f"{'stage':<7}{'shape':<6}{'clip':<18}{'workers':>8}{'samples/s':>11}{'frames/s':>10}"
  print("\n" + header + "\n" + "-" * len(header))
  for r in rows:
    print(
      f"{r['stage']:<7}{r['shape']:<6}{r['clip']:<18}{r['workers']:>8}"
      f"{r['samples_per_s']:>11.2f}{r['frames_per_s']:>10.1f}"
    )
  out = Path(c.json_out)
  out.parent.mkdir(parents=True, exist_ok=True)
  record = {
    "config": json.loads(c.to_json_best_effort()),
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "source": {
      "videos": c.videos,
      "size": [c.source_height, c.source_width],
      "fps": c.source_fps,
      "seconds": c.source_seconds,
      "codec": "h264 (libx264, crf 23)",
    },
    "rows": rows,
  }
  out.write_text(json.dumps(record, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
