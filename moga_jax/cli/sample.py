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
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from moga_jax.data import video_io
from moga_jax.diffusion.sampling import generate
from moga_jax.train.config_checks import validate_config
from moga_jax.train.config_files import config_path
from moga_jax.train.state import load_trained

_CONFIG = config_flags.DEFINE_config_file("config", config_path("tiny"), "The run's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to load (a run trained here).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Converted Wan folder (moga_jax.wan.convert).")
_PROMPTS = flags.DEFINE_multi_string(
  "prompt", None, "Caption of one shot; repeat per shot.", required=True
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "Output mp4 (default WORKDIR/sample.mp4, or sample.mp4 with --weights)."
)
_NEGATIVE = flags.DEFINE_string(
  "negative_prompt",
  None,
  "Wan configs: the caption guidance steers away from (default: "
  "config.sample.negative_prompt). Seed, solver, steps, frames and size are config "
  "overrides: --config.sample.seed=3 --config.sample.solver=euler --config.sample.steps=30 "
  "--config.video.frames=81 --config.video.height=480 --config.video.width=832.",
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


def main(argv):
  del argv
  cfg = _CONFIG.value
  wan = "video" in cfg
  if wan and _WEIGHTS.value is None:
    raise app.UsageError(
      "configs with a `video` section sample a Wan DiT: give --weights (a "
      "converted Wan folder: umT5 and the VAE, and the DiT unless --workdir "
      "names a run fine-tuned from it)"
    )
  if not wan and _WEIGHTS.value is not None:
    raise app.UsageError(
      "--weights needs a Wan config (one with a `video` section, e.g. configs/wan1_3b_moga.py)"
    )
  if not wan and _WORKDIR.value is None:
    raise app.UsageError("give --workdir, a run trained here")
  if _NEGATIVE.value is not None:
    if not wan:
      raise app.UsageError(
        "--negative_prompt needs a Wan config (the tiny model guides against the empty caption)"
      )
    cfg.sample.negative_prompt = _NEGATIVE.value
  prompts = list(_PROMPTS.value)
  if wan:  # the DiT's widths are the converted checkpoint's; the `wan` extra, Wan configs only
    from moga_jax.wan import pipeline as wan_pipeline
    from moga_jax.wan.converted_folder import with_converted_widths

    cfg = with_converted_widths(cfg, _WEIGHTS.value)
  validate_config(cfg)
  if wan:
    # The DiT of a fine-tuned run (--workdir) or the converted one; umT5 and the VAE always
    # come from the converted folder.
    dit = load_trained(cfg, _WORKDIR.value) if _WORKDIR.value else None
    output = Path(_OUTPUT.value or (Path(_WORKDIR.value or ".") / "sample.mp4"))
    with tqdm(total=cfg.sample.steps, desc="sample", unit="step") as bar:
      video, frame_shot = wan_pipeline.generate(
        _WEIGHTS.value,
        cfg,
        prompts,
        seed=cfg.sample.seed,
        dit=dit,
        progress=lambda _: bar.update(1),
      )
    fps = cfg.video.fps
  else:
    workdir = Path(_WORKDIR.value)
    output = Path(_OUTPUT.value or workdir / "sample.mp4")
    video = generate(load_trained(cfg, workdir), cfg, prompts, seed=cfg.sample.seed)
    frame_shot = np.repeat(np.arange(len(prompts)), cfg.data.frames_per_shot)
    fps = cfg.data.fps
  output.parent.mkdir(parents=True, exist_ok=True)
  video_io.write_mp4(output, video, fps=fps)
  thumbnails, columns = shot_rows(video, frame_shot, columns=_SHEET_COLUMNS, size=_THUMBNAIL)
  sheet = video_io.contact_sheet(
    thumbnails, output.with_suffix(".png"), columns=columns, labels=prompts
  )
  print(
    f"video: {output} ({len(video)} frames of {video.shape[2]}x{video.shape[1]}, "
    f"{len(prompts)} shots)\ncontact sheet: {sheet}"
  )
