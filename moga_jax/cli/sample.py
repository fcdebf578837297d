"""Sample a multi-shot video: one shot per --prompt.

From a run trained here (the latest checkpoint of WORKDIR):

  python sample.py --config configs/tiny.py --workdir runs/tiny \
      --prompt "a red circle moving right on a blue background" \
      --prompt "a yellow square moving up on a green background" --output runs/tiny/sample.mp4

From converted Wan 2.1 weights (`python -m moga_jax.wan.convert`), with the real umT5 encoder
and Wan VAE:

  python sample.py --config configs/wan1_3b_moga.py --weights weights/wan1_3b_moga \
      --prompt "a red fox runs through snow" --output fox.mp4

From a Wan run fine-tuned here (`train.py --init weights/wan1_3b_moga --workdir runs/wan`): its
DiT (routers included) from the run, umT5 and the VAE from the converted folder:

  python sample.py --config configs/wan1_3b_moga.py --weights weights/wan1_3b_moga \
      --workdir runs/wan --prompt "a red fox runs through snow"

Installed, the same is `moga-sample` (`pip install 'moga-jax[train]'`; Wan configs also need the
`wan` extra, imported only for them). The checkout's sample.py is a wrapper around this module.

Integrates the flow from noise with classifier-free guidance (a progress bar over steps) and
writes the mp4 and a PNG contact sheet beside it (one row per shot, labelled with its prompt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import flags
from ml_collections import config_flags

from moga_jax.data import video_io
from moga_jax.train.config_files import config_path
from moga_jax.train.loop import config_errors
from moga_jax.train.pipeline import pipeline_for
from moga_jax.train.run_config import RunConfig


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags, defined when it runs (moga_jax.cli), so that a test can run it
  in-process with its own FlagValues."""
  config_flags.DEFINE_config_file(
    "config", config_path("tiny"), "The run's config.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "workdir", None, "Run directory to load (a run trained here).", flag_values=flag_values
  )
  flags.DEFINE_string(
    "weights", None, "Converted Wan folder (moga_jax.wan.convert).", flag_values=flag_values
  )
  flags.DEFINE_multi_string(
    "prompt", None, "Caption of one shot; repeat per shot.", required=True, flag_values=flag_values
  )
  flags.DEFINE_string(
    "output",
    None,
    "Output mp4 (default WORKDIR/sample.mp4, or sample.mp4 with --weights).",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "negative_prompt",
    None,
    "Wan configs: the caption guidance steers away from (default: "
    "config.sample.negative_prompt). Seed, solver, steps, frames and size are config "
    "overrides: --config.sample.seed=3 --config.sample.solver=euler --config.sample.steps=30 "
    "--config.video.frames=81 --config.video.height=480 --config.video.width=832.",
    flag_values=flag_values,
  )


# Contact sheet: frames per shot row, and the longer side of each thumbnail in pixels.
_SHEET_COLUMNS, _THUMBNAIL = 8, 160


def shot_rows(
  video: np.ndarray, frame_shot: np.ndarray, *, columns: int, size: int
) -> tuple[np.ndarray, int]:
  """Up to `columns` evenly spaced frames of every shot, row by row, as thumbnails whose longer
  side is about `size` (small frames blown up by whole pixels, large ones area-averaged);
  returns (thumbnails, frames per row)."""
  shots = [np.flatnonzero(frame_shot == s) for s in range(int(frame_shot.max()) + 1)]
  columns = int(min(columns, *(len(f) for f in shots)))
  picks = np.concatenate(
    [f[np.linspace(0, len(f) - 1, columns).round().astype(int)] for f in shots]
  )
  frames = video[picks]
  h, w = frames.shape[1:3]
  if max(h, w) <= size // 2:
    zoom = size // max(h, w)
    return frames.repeat(zoom, axis=1).repeat(zoom, axis=2), columns
  scale = min(1.0, size / max(h, w))
  return video_io.resize_frames(frames, 2 * round(h * scale / 2), 2 * round(w * scale / 2)), columns


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
  del argv
  f = flag_values
  cfg = f.config
  pipeline = pipeline_for(cfg)
  cfg = pipeline.configure(cfg, f.weights)  # Wan: the DiT's widths are the converted ones
  with config_errors():
    RunConfig.from_config_dict(cfg)
  prompts = list(f.prompt)
  samples = pipeline.sample(
    cfg,
    prompts,
    seed=cfg.sample.seed,
    workdir=f.workdir,
    weights=f.weights,
    negative_prompt=f.negative_prompt,
  )
  output = Path(f.output or Path(f.workdir or ".") / "sample.mp4")
  output.parent.mkdir(parents=True, exist_ok=True)
  video = samples.video
  video_io.write_mp4(output, video, fps=samples.fps)
  thumbnails, columns = shot_rows(
    video, samples.frame_shot, columns=_SHEET_COLUMNS, size=_THUMBNAIL
  )
  sheet = video_io.contact_sheet(
    thumbnails, output.with_suffix(".png"), columns=columns, labels=prompts
  )
  print(
    f"video: {output} ({len(video)} frames of {video.shape[2]}x{video.shape[1]}, "
    f"{len(prompts)} shots)\ncontact sheet: {sheet}"
  )
