"""Knobs of `benchmarks/data.py` (video decoding and loading throughput), one preset per use.

  python benchmarks/data.py --config configs/data_bench.py          # the README's numbers
  python benchmarks/data.py --config configs/data_bench.py:smoke    # seconds; what CI runs

Source videos are made first (H.264, a smooth panning picture at source_height x source_width
and source_fps, like footage from a 720p camera), then for each target shape every stage is
timed: decoding one sample per video (seek, resample to the shape's fps, aspect-preserving
crop), in this process and in grain worker processes; building the array_record dataset; and
the grain loader over it, with and without workers.
"""

from ml_collections import ConfigDict


def _shape(name: str, num_frames: int, height: int, width: int, fps: float) -> ConfigDict:
  return ConfigDict(
    {"name": name, "num_frames": num_frames, "height": height, "width": width, "fps": fps}
  )


def get_config(preset: str = "default") -> ConfigDict:
  c = ConfigDict()
  c.preset = preset
  c.workdir = "runs/data_bench"  # source videos and prepared datasets (reused between runs)
  c.json_out = "benchmarks/results/data.json"
  c.videos = 4
  c.source_height, c.source_width, c.source_fps = 720, 1280, 30.0
  c.source_seconds = 6.0  # each video; the Wan shape's sample is 81 frames at 16 fps = 5.06 s
  c.shapes = [
    _shape("tiny", 16, 32, 32, 8.0),  # configs/tiny.py's clips
    _shape("wan", 81, 480, 832, 16.0),  # configs/wan1_3b_moga.py's clips (Wan 2.1 480p)
  ]
  c.workers = (0, 2)  # grain worker processes (0: in this process)
  c.loader_batches = 4  # batches timed per loader (batch size 1), after one warm-up batch
  if preset == "smoke":
    c.workdir = "runs/data_bench_smoke"
    c.json_out = "runs/data_bench_smoke/data.json"
    c.videos = 2
    c.source_height, c.source_width, c.source_fps = 72, 128, 24.0
    c.source_seconds = 1.5
    c.shapes = [_shape("tiny", 8, 16, 16, 8.0)]
    c.workers = (0, 1)
    c.loader_batches = 1
  elif preset != "default":
    raise ValueError(f"configs/data_bench.py:{preset}: the preset must be 'default' or 'smoke'")
  return c
