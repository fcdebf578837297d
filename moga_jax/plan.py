"""Plan a run before renting the machines: tokens, parameters, per-device memory and
whole-model FLOPs for a config on a mesh, and (--aot) an ahead-of-time compile of the training
step.

  python -m moga_jax.plan --config configs/wan14b_moga_580k.py [--mesh fsdp=8,context=8] [--aot]
  python -m moga_jax.plan --config configs/wan1_3b_moga.py:stage2 --json   # one JSON object
  python -m moga_jax.plan --table5                # the paper's Table 5, ours beside theirs

Parameter, optimizer and gradient bytes per device are exact (from the shardings the training
step uses). Activation bytes are an estimate of what remat keeps (one hidden state per block
boundary) plus one block's working set. --aot lowers and compiles the real training step for a
mesh of fake CPU devices (`jax.jit(step).lower(abstract inputs).compile()`) and prints XLA's
memory_analysis() per device; nothing is allocated, but compiling the full model takes minutes.

FLOPs (`model_flops`) are one sample's forward pass through the DiT, i.e. one denoising step
without classifier-free guidance (which doubles it), 2 FLOPs per multiply-add:
  * every linear: patch embedding and head; per block self-attention q/k/v/o, the MoGA router,
    cross-attention q/o on the video tokens and k/v on each shot's caption tokens, the FFN;
    the caption embedding MLP and the time embedding (once per sample, negligible);
  * attention scores and PV, 4 * head_dim * heads FLOPs per (query, key) pair: self-attention
    (dense: every token sees all N; the configured block: the sum of its branches) and
    cross-attention (each token sees its own shot's caption_len tokens; ShotCrossAttention
    scores all shots x caption_len keys and masks the other shots', which multi-shot clips pay
    on top of this count).
  Not counted: the text encoder (run once per prompt, not per step), the VAE, and elementwise
  work (norms, RoPE, softmax, modulation, gates, the mean of the branches).
The configured block's branches, keys per query:
  * MoGA: top_k * N / M, groups assumed balanced (what the balancing loss aims at);
  * STGA: exact, from the spatial windows (rows and columns split as evenly as possible) and the
    temporal groups of the clip's shot layout, plus `stga_context_frames` frames of each
    adjacent temporal group. Shot layout (ours): `video.shots` (`data.shots`) shots of equal
    length over the latent frames, the first ones one frame longer when it does not divide;
    a shot is one temporal group, or pieces of `stga_temporal_group` frames when that is set;
  * per-frame attention: the H x W tokens of the query's latent frame;
  * the old 3D window branch, when set: its window's tokens (clipped to the grid).
Blocks in `dense_layers`, and blocks with no branch configured, count as dense attention.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from moga_jax import config_checks
from moga_jax.config_checks import validate_sharding
from moga_jax.model import dit_from_config
from moga_jax.sharding import ShardingRules, make_mesh, state_shardings
from moga_jax.training import TrainState, latent_loss_fn, make_optimizer, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/wan14b_moga_580k.py",
                                          "Config with video, model, train and sharding.")
_MESH = flags.DEFINE_string("mesh", None, "Mesh axis sizes, e.g. fsdp=8,context=8 (others 1); "
                            "default: the config's sharding.mesh.")
_DEVICES = flags.DEFINE_integer("devices", None, "Device count when the mesh has a -1 axis.")
_AOT = flags.DEFINE_bool("aot", False, "Compile the training step for a fake CPU mesh and "
                         "report XLA's per-device memory analysis.")
_JSON = flags.DEFINE_bool("json", False, "Print only the plan (or Table 5) as one JSON object "
                          "on stdout, no other text.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the plan (or Table 5) as JSON to "
                                "this path.")
_TABLE5 = flags.DEFINE_bool("table5", False, "Compute the paper's Table 5 (Wan2.1-1.3B, 480x832, "
                            "5-30 s, dense and M = 5, 10, 20) and print it beside the paper's; "
                            "--config and --mesh are not used.")
_SHOT_SECONDS = flags.DEFINE_float("table5_shot_seconds", 5.0, "Table 5's shot layout: one shot "
                                   "(= one STGA temporal group) per this many seconds of video, "
                                   "rounded; 0: one shot per clip.")

GiB = 2**30


def latent_grid(cfg) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """(latent frames, height, width) and the token grid after the patch embedding."""
  latent, patch = config_checks.latent_grid(cfg), tuple(cfg.model.patch)
  if any(n % p for n, p in zip(latent, patch, strict=True)):
    raise ValueError(f"latent grid {latent} is not divisible by the patch {patch}")
  return latent, tuple(n // p for n, p in zip(latent, patch, strict=True))


# Table 5 of the paper (arXiv 2510.18692, App. A): whole-model forward PFLOPs of Wan2.1-1.3B
# at 480x832, 16 fps, one sample, one step.
PAPER_TABLE5 = {
  "seconds": (5, 10, 15, 20, 30),
  "frames": (77, 157, 237, 317, 477),
  "tokens": (31_200, 62_400, 93_600, 124_800, 187_200),
  "dense": (0.28, 0.88, 1.85, 3.19, 6.94),
  "M=5": (0.093, 0.34, 0.67, 1.09, 2.26),
  "M=10": (0.065, 0.25, 0.48, 0.78, 1.56),
  "M=20": (0.051, 0.21, 0.39, 0.61, 1.22),
}
TABLE5_ROWS = ("dense", "M=5", "M=10", "M=20")


def _split(n: int, parts: int) -> list[int]:
  """Sizes of `parts` consecutive, nearly equal pieces of n (the first n % parts one longer)."""
  q, r = divmod(n, parts)
  return [q + 1] * r + [q] * (parts - r)


def clip_shots(cfg) -> int:
  """Shots per training clip of a config: video.shots (Wan-scale configs) or data.shots."""
  return int(cfg.video.shots if "video" in cfg else cfg.data.shots)


def shot_frames(frames: int, shots: int) -> list[int]:
  """Latent (token) frames of each shot: `shots` shots of equal length (our assumption for
  planning; real clips have their own cuts), at most one shot per frame."""
  return _split(frames, max(1, min(shots, frames)))


def temporal_groups(shot_lengths, max_frames: int | None) -> list[int]:
  """STGA's temporal groups, in frames: each shot whole, or cut into consecutive pieces of
  `max_frames` frames (the last one shorter)."""
  groups = []
  for n in shot_lengths:
    if max_frames is None:
      groups.append(n)
    else:
      groups += [max_frames] * (n // max_frames) + ([n % max_frames] if n % max_frames else [])
  return groups


def stga_key_sum(grid: tuple[int, int, int], groups, windows: tuple[int, int],
                 context_frames: int) -> int:
  """Sum over all queries of the keys STGA gives them: a query sees its (temporal group,
  spatial window), plus in the same window the last `context_frames` frames of the previous
  temporal group and the first ones of the next."""
  _, h, w = grid
  area2 = sum(a * a for a in _split(h, windows[0])) * sum(b * b for b in _split(w, windows[1]))
  pairs = 0
  for i, f in enumerate(groups):
    before = min(context_frames, groups[i - 1]) if i > 0 else 0
    after = min(context_frames, groups[i + 1]) if i + 1 < len(groups) else 0
    pairs += f * (f + before + after)
  return pairs * area2


def attention_pairs(cfg, grid: tuple[int, int, int], shots: int | None = None
                    ) -> dict[str, float]:
  """(query, key) pairs of one sample through one block with the configured attention, by
  branch; {} when no branch is configured (a dense block). `shots` defaults to the config's."""
  a, n = cfg.model.attention, math.prod(grid)
  pairs = {}
  if a.num_groups is not None:
    k = a.get("top_k", 1)
    pairs["moga_groups"] = k * n * (k * n / a.num_groups)
  if a.get("stga_windows") is not None:
    groups = temporal_groups(shot_frames(grid[0], clip_shots(cfg) if shots is None else shots),
                             a.get("stga_temporal_group"))
    pairs["stga"] = float(stga_key_sum(grid, groups, tuple(a.stga_windows),
                                       a.get("stga_context_frames", 1)))
  if a.get("frame_attention", False):
    pairs["frame"] = float(n * grid[1] * grid[2])
  if a.get("window") is not None:
    keys = math.prod(min(w * t, g) for w, t, g in zip(a.window, a.window_tile, grid, strict=True))
    pairs["window"] = float(n * keys)
  return pairs


def model_flops(cfg, grid: tuple[int, int, int] | None = None, shots: int | None = None
                ) -> dict:
  """Whole-model forward FLOPs of one sample (one denoising step), dense and with the
  configured attention block; see the module docstring for what is counted."""
  m, a = cfg.model, cfg.model.attention
  if grid is None:
    grid = latent_grid(cfg)[1]
  shots = clip_shots(cfg) if shots is None else shots
  n, d, layers = math.prod(grid), m.dim, m.num_layers
  inner = d  # num_heads * head_dim
  channels = m.in_channels if "in_channels" in m else 3 * m.latent_factor**2
  caption = cfg.video.caption_len if "video" in cfg else cfg.data.caption_len
  text = shots * caption  # caption tokens of one sample (each shot its own caption)
  patch = math.prod(m.patch)
  pairs = attention_pairs(cfg, grid, shots)
  sparse_layers = layers - len(m.dense_layers) if pairs else 0
  router_out = 0
  if a.num_groups is not None and sparse_layers:
    router_out = a.num_groups * (m.num_heads if a.get("per_head_router", False) else 1)
  linear = {  # 2 FLOPs per multiply-add
    "patch_embedding": 2.0 * n * patch * channels * d,
    "head": 2.0 * n * d * patch * channels,
    "text_embedding": 2.0 * text * (m.text_dim * d + d * d),
    "time_embedding": 2.0 * (m.get("freq_dim", 256) * d + d * d + 6 * d * d),
    "self_attention_qkvo": layers * 2.0 * n * 4 * d * inner,
    "cross_attention_q_o": layers * 2.0 * n * 2 * d * d,
    "cross_attention_kv": layers * 2.0 * text * 2 * d * d,
    "ffn": layers * 2.0 * n * 2 * d * m.ffn_dim,
    "router": sparse_layers * 2.0 * n * d * router_out,
  }
  cross_scores = layers * 4.0 * n * caption * inner
  per_pair = 4.0 * inner  # QK^T and PV: 2 multiply-adds per (query, key, channel)
  attention_dense = layers * per_pair * n * n
  branches = {k: sparse_layers * per_pair * v for k, v in pairs.items()}
  attention_moga = (layers - sparse_layers) * per_pair * n * n + sum(branches.values())
  common = sum(v for k, v in linear.items() if k != "router") + cross_scores
  dense = common + attention_dense
  moga = common + linear["router"] + attention_moga
  return {
    "tokens": n, "token_grid": tuple(grid), "shots": shots,
    "dense": dense, "moga": moga,
    "self_attention_dense": attention_dense, "self_attention_moga": attention_moga,
    "self_attention_branches": branches,
    "attention_density": attention_moga / attention_dense,
    "linear": linear, "cross_attention_scores": cross_scores,
    "sparse_layers": sparse_layers,
  }


def table5(shot_seconds: float | None = 5.0, groups=(5, 10, 20)) -> dict:
  """Our whole-model forward PFLOPs for the paper's Table 5: Wan2.1-1.3B widths
  (configs/wan1_3b_moga.py), 480x832 at 16 fps, 77/157/237/317/477 frames (5-30 s); dense and
  MoGA with M groups + 2x2 STGA + per-frame attention (the config's block). STGA's temporal
  groups: one shot per `shot_seconds` of video (rounded, at least one); None or 0: one shot.

  Also how the cells scale with M: ours are exactly fixed + router + slope / M (slope: the
  dense self-attention, fixed: every FLOP that does not depend on M); "paper_fit" is the least-
  squares line a + b / M through the paper's three MoGA cells of each duration."""
  from configs import wan1_3b_moga

  rows = ("dense", *(f"M={g}" for g in groups))
  ours, density = {row: [] for row in rows}, {row: [] for row in rows[1:]}
  tokens, shots_used, static, fixed, slope = [], [], [], [], []
  for seconds, frames in zip(PAPER_TABLE5["seconds"], PAPER_TABLE5["frames"], strict=True):
    cfg = wan1_3b_moga.get_config("stage2")
    cfg.video.frames = frames
    shots = max(1, round(seconds / shot_seconds)) if shot_seconds else 1
    cfg.video.shots = shots
    grid = latent_grid(cfg)[1]
    tokens.append(math.prod(grid))
    shots_used.append(shots)
    for g in groups:
      cfg.model.attention.num_groups = g
      f = model_flops(cfg, grid)
      ours[f"M={g}"].append(f["moga"] / 1e15)
      density[f"M={g}"].append(f["attention_density"])
    ours["dense"].append(f["dense"] / 1e15)
    branches = f["self_attention_branches"]
    static.append((f["self_attention_moga"] - branches["moga_groups"]) / f["self_attention_dense"])
    fixed.append((f["moga"] - branches["moga_groups"] - f["linear"]["router"]) / 1e15)
    slope.append(f["self_attention_dense"] / 1e15)
  paper = {k: list(v) for k, v in PAPER_TABLE5.items()}
  rel = {row: [o / p - 1 for o, p in zip(vals, paper[row], strict=True)]
         for row, vals in ours.items() if row in paper}
  x = np.array([1.0 / g for g in groups])
  cells = np.array([paper[f"M={g}"] for g in groups if f"M={g}" in paper])
  fit = ({"b": [], "a": []} if len(cells) < 2 else
         dict(zip(("b", "a"), map(list, np.polyfit(x[:len(cells)], cells, 1)), strict=True)))
  return {"seconds": paper["seconds"], "frames": paper["frames"], "tokens": tokens,
          "paper_tokens": paper["tokens"], "shots": shots_used, "shot_seconds": shot_seconds,
          "pflops": ours, "paper_pflops": {row: paper[row] for row in ours if row in paper},
          "relative_difference": rel, "attention_density": density,
          "static_density": static, "fixed_pflops": fixed, "slope_pflops": slope,
          "paper_fit": fit}


def format_table5(t: dict) -> str:
  head = ["", *(f"{s} s" for s in t["seconds"])]
  rows = [head,
          ["frames", *map(str, t["frames"])],
          ["tokens", *(f"{n:,}" for n in t["tokens"])],
          ["shots (STGA temporal groups)", *map(str, t["shots"])]]
  for row, vals in t["pflops"].items():
    label = "full attention" if row == "dense" else f"MoGA {row}"
    rows.append([f"{label}, ours", *(f"{v:.3g}" for v in vals)])
    if row in t["paper_pflops"]:
      rows.append([f"{label}, paper", *(f"{v:g}" for v in t["paper_pflops"][row])])
      rows.append(["  difference", *(f"{100 * r:+.1f}%" for r in t["relative_difference"][row])])
  rows.append(["STGA + frame density, ours", *(f"{100 * d:.1f}%" for d in t["static_density"])])
  rows.append(["MoGA = a + b / M: b, ours", *(f"{v:.3g}" for v in t["slope_pflops"])])
  if t["paper_fit"]["b"]:
    rows.append(["  b, paper (fit)", *(f"{v:.3g}" for v in t["paper_fit"]["b"])])
  rows.append(["  a, ours", *(f"{v:.3g}" for v in t["fixed_pflops"])])
  if t["paper_fit"]["a"]:
    rows.append(["  a, paper (fit)", *(f"{v:.3g}" for v in t["paper_fit"]["a"])])
  widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
  lines = ["Table 5: whole-model forward PFLOPs, Wan2.1-1.3B, 480x832, one sample, one step "
           "(MoGA rows: + 2x2 STGA + per-frame attention)"]
  lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                      enumerate(zip(r, widths, strict=True))) for r in rows]
  lines.append("ours: a = every FLOP that does not depend on M (linears, cross-attention, STGA, "
               "per-frame), b = dense self-attention (router FLOPs, ~1e-4 of a, left out)")
  return "\n".join(lines)


def _abstract_train_state(cfg, mesh, rules) -> TrainState:
  def build():
    dit = dit_from_config(cfg.model, rules=rules, rngs=nnx.Rngs(cfg.seed))
    return dit, make_optimizer(dit, cfg.train)

  graphdef, abstract = nnx.split(nnx.eval_shape(build))
  shardings = state_shardings(abstract, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  from jax.sharding import NamedSharding

  from moga_jax.sharding import batch_spec
  return TrainState(graphdef, abstract, shardings, NamedSharding(mesh, batch_spec(rules)))


def _abstract_batch(cfg, latent, batch_sharding) -> dict:
  b, v, m = cfg.train.batch_size, cfg.video, cfg.model
  shapes = {
    "latents": ((b, *latent, m.in_channels), jnp.float32),
    "context": ((b, v.shots, v.caption_len, m.text_dim), jnp.float32),
    "context_mask": ((b, v.shots, v.caption_len), jnp.bool_),
    "frame_shot": ((b, latent[0]), jnp.int32),
  }
  return {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding) for k, (s, d) in shapes.items()}


def _device_bytes(abstract) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract))


def flops_summary(cfg, grid: tuple[int, int, int]) -> dict:
  """The FLOPs part of the plan (no model is built): whole-model PFLOPs dense and with the
  configured block, attention density, the shot layout used and the full breakdown."""
  flops = model_flops(cfg, grid)
  a = cfg.model.attention
  shots = shot_frames(grid[0], flops["shots"])
  return {
    "pflops_dense": flops["dense"] / 1e15,
    "pflops_moga": flops["moga"] / 1e15,
    "attention_density": flops["attention_density"],
    "shot_frames": shots,
    "stga_temporal_groups": (temporal_groups(shots, a.get("stga_temporal_group"))
                             if a.get("stga_windows") is not None else None),
    "flops_per_sample_forward": flops,
  }


def make_plan(cfg, mesh_shape: dict[str, int], *, aot: bool = False) -> dict:
  """Everything the planner prints, as a dict (also used by the tests)."""
  devices = math.prod(mesh_shape.values())
  mesh = make_mesh(mesh_shape, devices=jax.devices()[:devices])
  rules = ShardingRules.from_config(cfg.sharding.rules)
  latent, grid = latent_grid(cfg)
  tokens = math.prod(grid)
  m = cfg.model
  ts = _abstract_train_state(cfg, mesh, rules)
  params = nnx.state(nnx.merge(ts.graphdef, ts.state)[0], nnx.Param)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  param_bytes = _device_bytes(params)
  state_bytes = _device_bytes(ts.state)

  size = lambda logical: math.prod(mesh.shape[a] for a in rules.mesh_axes(logical))
  batch_local = cfg.train.batch_size // size("activation_batch")
  seq_local = tokens // size("activation_length")
  heads_local = m.num_heads // (size("activation_length") * size("activation_heads"))
  head_dim = m.dim // m.num_heads
  f32 = 4
  boundary = (m.num_layers if m.remat else 1) * batch_local * seq_local * m.dim * f32
  # One block's working set: q, k, v, attention out and the sorted copies for the local heads
  # over the whole sequence, plus the FFN hidden state of the local tokens.
  block = batch_local * (7 * tokens * heads_local * head_dim
                         + 2 * seq_local * m.ffn_dim // size("activation_mlp")) * f32
  plan = {
    "latent_grid": latent, "token_grid": grid, "tokens": tokens,
    "mesh": dict(mesh.shape), "devices": devices, "parameters": n_params,
    "per_device_bytes": {
      "params": param_bytes,
      "optimizer_state": state_bytes - param_bytes,
      "gradients": param_bytes,
      "activations_estimate": boundary + block,
    },
  }
  plan.update(flops_summary(cfg, grid))
  if aot:
    step = make_train_step(cfg, ts, loss=latent_loss_fn)
    batch = _abstract_batch(cfg, latent, ts.batch_sharding)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                               sharding=jax.NamedSharding(mesh, jax.P()))
    start = time.perf_counter()
    with jax.set_mesh(mesh):
      compiled = step.lower(ts.state, batch, key).compile()
    analysis = compiled.memory_analysis()
    plan["aot"] = {
      "compile_seconds": round(time.perf_counter() - start, 1),
      "argument_bytes": analysis.argument_size_in_bytes,
      "output_bytes": analysis.output_size_in_bytes,
      "alias_bytes": analysis.alias_size_in_bytes,
      "temp_bytes": analysis.temp_size_in_bytes,
    }
  return plan


def format_plan(plan: dict) -> str:
  gib = lambda n: f"{n / GiB:9.2f} GiB"
  mem = plan["per_device_bytes"]
  mesh = " x ".join(f"{k}={v}" for k, v in plan["mesh"].items())
  lines = [
    f"latent grid (frames, height, width): {plan['latent_grid']}",
    f"token grid after the patch:          {plan['token_grid']} = {plan['tokens']:,} tokens",
    f"mesh: {mesh} ({plan['devices']} devices)",
    f"parameters: {plan['parameters'] / 1e9:.2f} B",
    "per device:",
    f"  params             {gib(mem['params'])}",
    f"  optimizer state    {gib(mem['optimizer_state'])}",
    f"  gradients          {gib(mem['gradients'])}",
    f"  activations (est.) {gib(mem['activations_estimate'])}  (remat: block inputs + 1 block)",
    f"  total (est.)       {gib(sum(mem.values()))}",
  ]
  lines += _format_flops(plan)
  if "aot" in plan:
    a = plan["aot"]
    lines += [
      f"ahead-of-time compile of the training step ({a['compile_seconds']} s), per device:",
      f"  arguments {gib(a['argument_bytes'])}, outputs {gib(a['output_bytes'])} "
      f"(aliased {gib(a['alias_bytes'])}), temporaries {gib(a['temp_bytes'])}",
    ]
  return "\n".join(lines)


def _format_flops(plan: dict) -> list[str]:
  f = plan["flops_per_sample_forward"]
  pf = lambda x: f"{x / 1e15:.4g}"
  branches = " + ".join(f"{k} {pf(v)}" for k, v in f["self_attention_branches"].items())
  linear = sum(f["linear"].values())
  lines = [
    "whole-model FLOPs, one sample, forward (one denoising step; CFG doubles it):",
    f"  full attention     {pf(f['dense']):>10} PFLOP",
    f"  configured block   {pf(f['moga']):>10} PFLOP  "
    f"({100 * (1 - f['moga'] / f['dense']):.1f}% fewer; attention density "
    f"{100 * plan['attention_density']:.2f}%)",
    f"    self-attention   {pf(f['self_attention_moga'])} PFLOP "
    f"(full: {pf(f['self_attention_dense'])})"
    + (f" = {branches} in {f['sparse_layers']} blocks" if branches else ""),
    f"    linears          {pf(linear)} PFLOP, cross-attention scores "
    f"{pf(f['cross_attention_scores'])} PFLOP",
  ]
  if plan.get("stga_temporal_groups") is not None:
    lines.append(f"    STGA: {len(plan['shot_frames'])} shot(s) of {plan['shot_frames']} latent "
                 f"frames (assumed equal), temporal groups {plan['stga_temporal_groups']}")
  return lines


def _emit(obj: dict, text: str) -> None:
  if _JSON.value:
    print(json.dumps(obj))
  else:
    print(text)
  if _JSON_OUT.value:
    Path(_JSON_OUT.value).write_text(json.dumps(obj, indent=2))


def parse_mesh(text: str) -> dict[str, int]:
  try:
    pairs = [item.split("=") for item in text.split(",") if item]
    return {k.strip(): int(v) for k, v in pairs}
  except ValueError:
    raise ValueError(f"--mesh must look like fsdp=8,context=8, got {text!r}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; --json takes no value (it prints "
                         "the JSON), --json_out PATH writes it to a file")
  if _TABLE5.value:
    t = table5(_SHOT_SECONDS.value or None)
    _emit(t, format_table5(t))
    return
  cfg = _CONFIG.value
  mesh = dict(cfg.sharding.mesh)
  if _MESH.value:
    mesh = {a: 1 for a in mesh} | parse_mesh(_MESH.value)
  fixed = math.prod(n for n in mesh.values() if n != -1)
  devices = _DEVICES.value or fixed
  # Fake CPU devices for the mesh; must happen before jax starts its backend.
  jax.config.update("jax_num_cpu_devices", devices)
  if jax.device_count() < devices:
    raise ValueError(f"the mesh needs {devices} devices; this process has {jax.device_count()}")
  cfg.sharding.mesh = mesh
  shape = validate_sharding(cfg, devices)
  plan = make_plan(cfg, shape, aot=_AOT.value)
  _emit(plan, format_plan(plan))


if __name__ == "__main__":
  app.run(main)
