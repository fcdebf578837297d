"""A small, honest reproduction of the paper's claims on CPU: one command, results as JSON.

  python -m moga_jax.reproduction.run --config configs/reproduce.py          # make reproduce
  python -m moga_jax.reproduction.run --config configs/reproduce.py:smoke    # make reproduce-smoke

Every run of `config.runs` trains the tiny text-to-video model from scratch on the cross-shot
consistency set (3-shot clips; only the first caption names the subject) with one attention
variant, then is scored on held-out caption sets it never trained on:
  consistency  later shots whose subject (colour and shape, read from the pixels) is the one
               the captions imply: the analogue of the paper's Cross-Shot CLIP / DINO;
  adherence    shots whose background is the caption's colour;
  val_loss     flow-matching MSE on held-out clips (fixed noise and times);
  attention_flops, flops  the planner's accounting (self-attention; whole model), one sample;
  step_s, wall_s  measured training step time and the run's whole wall time;
  router       per MoGA layer: group sizes, the balance metric M * sum_i F_i^2 (1 when
               balanced, M when collapsed) and the IoU of the best group with the subject's
               tokens, for the trained router, the untrained one and random ids.
Each finished run is saved as WORKDIR/records/NAME.json (and a sheet of its first samples as
WORKDIR/samples/NAME.png), so an interrupted reproduction picks up where it stopped; the records
are then gathered into RESULTS/reproduction.json with plots.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, logging
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from moga_jax.data import video_io
from moga_jax.data.captions import encode_captions
from moga_jax.data.prepare import prepare_data
from moga_jax.diffusion.sampling import sample_videos
from moga_jax.errors import ConfigError
from moga_jax.model.text_to_video import frame_shots
from moga_jax.reproduction import plots as reproduce_plots
from moga_jax.reproduction.consistency_data import (
  held_out_captions,
  make_consistency_videos,
  render_clip,
)
from moga_jax.reproduction.eval import group_mask_iou, score_videos
from moga_jax.tools.flops import model_flops
from moga_jax.train import loop
from moga_jax.train.config_files import config_path, load_config_module
from moga_jax.train.pipeline import TinyPipeline
from moga_jax.train.run_config import RunConfig
from moga_jax.train.run_guard import cli_main
from moga_jax.train.state import loss_fn


def run_name(run: dict) -> str:
  groups = "" if run["num_groups"] is None else f"_m{run['num_groups']}"
  return f"{run['variant']}{groups}_{run['balance']}_s{run['seed']}"


def run_config(c, run: dict):
  """The model config of one run: the base with the variant's attention and balancing loss."""
  cfg = copy.deepcopy(c.base)
  a = cfg.model.attention
  variants = load_config_module("reproduce").VARIANTS  # the variants' one home
  if run["variant"] not in variants:
    raise ConfigError(f"run variant must be one of {sorted(variants)}, got {run['variant']!r}")
  a.num_groups = run["num_groups"]
  for field, value in variants[run["variant"]].items():
    a[field] = value
  if (a.num_groups is None) != (run["num_groups"] is None):
    raise ConfigError(f"run {run}: variant {run['variant']!r} and num_groups disagree")
  if run["balance"] == "off":
    cfg.diffusion.balance_weight = 0.0
  else:
    a.balance_loss = run["balance"]
  cfg.seed = run["seed"]
  cfg.train.steps = c.train_steps
  RunConfig.from_config_dict(cfg)
  return cfg


# --- Data ----------------------------------------------------------------------------------


def data_key(c) -> str:
  """Everything that shapes the training clips: the data folder and every record carry it, so a
  changed set is never read stale nor a record from another set counted as done."""
  d = c.base.data
  return (
    f"{c.train_clips}c_{d.shots}x{d.frames_per_shot}f_{d.height}x{d.width}"
    f"_r{d.subject_scale:g}_ch{c.change_rate:g}"
  )


def prepare_training_data(c, workdir: Path) -> tuple[Path, Path]:
  """(prepared dataset, source folder) of the training clips, made on first use."""
  d = c.base.data
  source = workdir / "data" / f"consistency_{data_key(c)}"
  if not (source / "captions.jsonl").exists():
    make_consistency_videos(
      source,
      c.train_clips,
      shots=d.shots,
      frames_per_shot=d.frames_per_shot,
      height=d.height,
      width=d.width,
      fps=d.fps,
      seed=0,
      change_rate=c.change_rate,
      subject_scale=d.subject_scale,
    )
  data = copy.deepcopy(d)
  data.source_dir = str(source)
  return prepare_data(data, workdir), source


def held_out_set(c, source: Path) -> list[list[dict]]:
  """Caption sets no training clip has, from the evaluation seed."""
  d = c.base.data
  return held_out_captions(
    c.eval.caption_sets,
    shots=d.shots,
    seed=c.eval.seed,
    exclude=source / "captions.jsonl",
    frames_per_shot=d.frames_per_shot,
    change_rate=c.change_rate,
  )


def _captions(specs: list[list[dict]], d) -> np.ndarray:
  return np.stack(
    [
      encode_captions([s["caption"] for s in spec], rows=d.max_shots, length=d.caption_len)
      for spec in specs
    ]
  )


def validation_batch(c, source: Path) -> tuple[dict, np.ndarray]:
  """Held-out clips rendered from unseen caption sets (no H.264): a training-format batch and
  the subject masks [B, F, H, W]."""
  d = c.base.data
  specs = held_out_captions(
    c.eval.val_clips,
    shots=d.shots,
    seed=c.eval.seed + 1,
    exclude=source / "captions.jsonl",
    frames_per_shot=d.frames_per_shot,
    change_rate=c.change_rate,
  )
  clips = [
    render_clip(spec, height=d.height, width=d.width, rng=i, subject_scale=d.subject_scale)
    for i, spec in enumerate(specs)
  ]
  video = video_io.pixels_to_unit(np.stack([v for v, _ in clips]))
  bounds = np.array([[[s["start"], s["end"]] for s in spec] for spec in specs], np.int32)
  batch = {
    "video": video,
    "captions": _captions(specs, d),
    "shot_bounds": bounds,
    "num_shots": np.full(len(specs), d.shots, np.int32),
  }
  return batch, np.stack([m for _, m in clips])


# --- Router probes -------------------------------------------------------------------------


def _with_recording(model, on: bool) -> list[int]:
  """Turns routing recording on or off in every MoGA block; returns their indices."""
  layers = []
  for i, block in enumerate(model.dit.blocks):
    if block.self_attn.router is not None:
      block.self_attn.record_routing = on
      layers.append(i)
  return layers


@nnx.jit
def _routed_forward(model, batch, key):
  """One forward pass at t = 0.5 (fixed noise): the velocity, with routing recorded."""
  context, mask = model.encode_text(batch["captions"])
  x0 = model.to_latents(batch["video"])
  shots = frame_shots(batch["shot_bounds"], batch["num_shots"], x0.shape[1])
  x_t = 0.5 * x0 + 0.5 * jax.random.normal(key, x0.shape)
  return model.velocity(x_t, jnp.full((x0.shape[0],), 0.5), context, mask, shots)[0]


def routing_ids(model, batch) -> list[np.ndarray]:
  """Top-1 group ids [B, N] of every MoGA layer on the batch ([] without MoGA)."""
  layers = _with_recording(model, True)
  if not layers:
    return []
  _routed_forward(model, batch, jax.random.key(0))
  recorded = nnx.pop(model, nnx.Intermediate)
  _with_recording(model, False)
  ids = {}
  for path, variable in nnx.to_flat_state(recorded):
    layer = next(p for p in path if isinstance(p, int))
    group_ids, _ = jax.tree.leaves(variable)  # the sown (group_ids [B, N, 1], probs)
    ids[layer] = np.asarray(group_ids)[..., 0]
  return [ids[i] for i in layers]


def router_stats(ids_per_layer: list[np.ndarray], masks: np.ndarray, grid, num_groups: int) -> dict:
  """Per layer: group fractions, balance metric M * sum F^2, mean best-group IoU with the
  subject over the clips."""
  layers = []
  for ids in ids_per_layer:
    fraction = np.bincount(ids.reshape(-1), minlength=num_groups) / ids.size
    iou = np.nanmean(
      [group_mask_iou(clip.reshape(grid), mask) for clip, mask in zip(ids, masks, strict=True)]
    )
    layers.append(
      {
        "group_fractions": fraction.round(4).tolist(),
        "balance_metric": float(num_groups * np.sum(fraction**2)),
        "subject_iou": float(iou),
      }
    )
  return {
    "layers": layers,
    "balance_metric": float(np.mean([r["balance_metric"] for r in layers])),
    "subject_iou": float(np.mean([r["subject_iou"] for r in layers])),
  }


# --- Training and evaluation ---------------------------------------------------------------


def train(cfg, c, probe) -> tuple[nnx.Module, dict]:
  """Trains cfg from scratch on one device, in memory (no checkpoints: a finished run's record
  is its save); probe(model, step) is called before the first step, every c.log_every steps and
  after the last. step_s leaves out the first step (the compile) and the probes."""
  history = []

  def record(model, step, metrics):
    if step:
      history.append({"step": step, **metrics})
    probe(model, step)

  result = loop.train(
    cfg,
    None,
    TinyPipeline(),
    hooks=[loop.Every(c.log_every, record, at_start=True)],
    devices=jax.devices()[:1],
  )
  return result.model(), {"history": history, "step_s": result.step_s}


def validation_loss(model, cfg, batch: dict, draws: int) -> float:
  """Flow-matching MSE without caption dropout, averaged over fixed noise draws."""
  cfg = copy.deepcopy(cfg)
  cfg.diffusion.caption_dropout = 0.0
  loss = nnx.jit(lambda model, batch, key: loss_fn(model, batch, key, cfg)[1][0])
  return float(np.mean([loss(model, batch, jax.random.key(10_000 + i)) for i in range(draws)]))


def samples_sheet(videos: np.ndarray, specs, path: Path, zoom: int = 3) -> Path:
  """One row per sampled clip (every frame, blown up), labelled with its first caption."""
  path.parent.mkdir(parents=True, exist_ok=True)
  frames = videos.repeat(zoom, axis=2).repeat(zoom, axis=3)
  return video_io.contact_sheet(
    frames.reshape(-1, *frames.shape[2:]),
    path,
    columns=videos.shape[1],
    labels=[spec[0]["caption"] for spec in specs[: len(videos)]],
  )


def evaluate_run(c, run: dict, source: Path, specs, val: tuple[dict, np.ndarray]) -> dict:
  cfg = run_config(c, run)
  cfg.data.source_dir = str(source)  # the consistency set (prepare_training_data made it)
  batch, masks = val
  grid = (
    cfg.data.shots * cfg.data.frames_per_shot,
    cfg.data.height // cfg.model.latent_factor // cfg.model.patch[1],
    cfg.data.width // cfg.model.latent_factor // cfg.model.patch[2],
  )
  m = cfg.model.attention.num_groups
  curve = []

  def probe(model, step):
    ids = routing_ids(model, batch)
    if ids:
      stats = router_stats(ids, masks, grid, m)
      curve.append(
        {
          "step": step,
          "balance_metric": stats["balance_metric"],
          "group_fractions": np.mean([r["group_fractions"] for r in stats["layers"]], axis=0)
          .round(4)
          .tolist(),
        }
      )
      if step == 0:
        curve[-1]["untrained"] = stats

  start = time.perf_counter()
  model, trained = train(cfg, c, probe)
  scores = {"sample_seed": [], "consistency": [], "adherence": []}
  for seed in c.eval.sample_seeds:
    videos = sample_videos(
      model,
      cfg,
      [[s["caption"] for s in spec] for spec in specs],
      seed=seed,
      steps=c.eval.sample_steps,
      guidance=c.eval.guidance,
    )
    if seed == c.eval.sample_seeds[0]:
      samples_sheet(
        videos[: c.eval.sheet_rows], specs, Path(c.workdir) / "samples" / f"{run_name(run)}.png"
      )
    summary = score_videos(list(videos), specs)
    scores["sample_seed"].append(seed)
    scores["consistency"].append(summary["consistency"])
    scores["adherence"].append(summary["adherence"])
    scores.setdefault("summaries", []).append(summary)
  flops = model_flops(cfg)
  record = {
    **{k: run[k] for k in ("variant", "num_groups", "balance", "seed", "experiments")},
    "name": run_name(run),
    "consistency": float(np.mean(scores["consistency"])),
    "adherence": float(np.mean(scores["adherence"])),
    "val_loss": validation_loss(model, cfg, batch, c.eval.val_noise_draws),
    "attention_flops": flops["self_attention_moga"],
    "attention_flops_dense": flops["self_attention_dense"],
    "flops": flops["moga"],
    "step_s": trained["step_s"],
    "train_steps": cfg.train.steps,
    "data": data_key(c),
    "wall_s": time.perf_counter() - start,
    "scores": scores,
    "history": trained["history"],
  }
  if m is not None:
    ids = routing_ids(model, batch)
    random_ids = [np.random.default_rng(i).integers(0, m, ids[0].shape) for i in range(len(ids))]
    record["router"] = {
      "trained": router_stats(ids, masks, grid, m),
      "untrained": curve[0]["untrained"],
      "random": router_stats(random_ids, masks, grid, m),
      "curve": [{k: v for k, v in p.items() if k != "untrained"} for p in curve],
    }
  return record


def reproduce(c) -> Path:
  """Runs every run not yet recorded, then writes RESULTS/reproduction.json and the plots."""
  workdir, results = Path(c.workdir), Path(c.results_dir)
  records_dir = workdir / "records"
  records_dir.mkdir(parents=True, exist_ok=True)
  _, source = prepare_training_data(c, workdir)
  specs, val = held_out_set(c, source), validation_batch(c, source)
  runs = [dict(r) for r in c.runs if set(r["experiments"]) & set(c.experiments)]

  def done(run: dict) -> bool:  # a record from another step budget or data set does not count
    path = records_dir / f"{run_name(run)}.json"
    if not path.exists():
      return False
    record = json.loads(path.read_text())
    return record["train_steps"] == c.train_steps and record.get("data") == data_key(c)

  if c.collect_only:
    missing = [run_name(r) for r in runs if not done(r)]
    if missing:
      logging.warning("collect_only: %d runs have no record yet: %s", len(missing), missing)
    runs = [r for r in runs if done(r)]
  for run in tqdm(runs, desc="reproduce", unit="run"):
    if done(run):
      continue
    record = evaluate_run(c, dict(run), source, specs, val)
    (records_dir / f"{run_name(run)}.json").write_text(json.dumps(record, indent=1))
    tqdm.write(
      f"{record['name']}: consistency {record['consistency']:.3f}, adherence "
      f"{record['adherence']:.3f}, val loss {record['val_loss']:.4f}, "
      f"{record['step_s']:.2f} s/step"
    )
  records = [json.loads((records_dir / f"{run_name(r)}.json").read_text()) for r in runs]
  results.mkdir(parents=True, exist_ok=True)
  out = results / "reproduction.json"
  out.write_text(json.dumps(records, indent=1))
  comparisons = reproduce_plots.variant_comparisons(records)
  (results / "comparisons.json").write_text(json.dumps(comparisons, indent=1))
  reproduce_plots.plot_all(records, results, experiments=tuple(c.experiments))
  for record in records:  # the samples' pictures go with the numbers
    sheet = workdir / "samples" / f"{record['name']}.png"
    if sheet.exists():
      shutil.copy(sheet, results / f"samples_{record['name']}.png")
  print(reproduce_plots.summary_table(records))
  if comparisons:
    print(reproduce_plots.comparison_table(comparisons))
  print(f"wrote {out} and plots in {results}")
  return out


def main() -> None:
  # The flag is defined here, not at import, so that importing this module next to another
  # one with a --config flag (moga_jax.tools.plan) works.
  config = config_flags.DEFINE_config_file(
    "config", config_path("reproduce"), "Reproduction config (configs/reproduce.py[:smoke])."
  )

  def run(argv):
    del argv
    reproduce(config.value)

  app.run(cli_main(run, "moga_jax.reproduction.run"))


if __name__ == "__main__":
  main()
