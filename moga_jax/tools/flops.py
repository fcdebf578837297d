"""Whole-model FLOPs of a config, counted the way the paper's Table 5 counts them.

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

import math

import numpy as np

from moga_jax.train.run_config import RunConfig, as_run_config


def latent_and_token_grids(cfg: RunConfig) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
  """(latent frames, height, width) and the token grid after the patch embedding (the
  RunConfig checked that the patch divides the latent grid)."""
  run = as_run_config(cfg)
  return run.latent_grid, run.token_grid


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


def clip_shots(cfg: RunConfig) -> int:
  """Shots per training clip of a config: video.shots (the Wan pipeline) or data.shots."""
  return as_run_config(cfg).shots


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


def stga_key_sum(
  grid: tuple[int, int, int], groups, windows: tuple[int, int], context_frames: int
) -> int:
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


def attention_pairs(
  cfg: RunConfig, grid: tuple[int, int, int], shots: int | None = None
) -> dict[str, float]:
  """(query, key) pairs of one sample through one block with the configured attention, by
  branch; {} when no branch is configured (a dense block). `shots` defaults to the config's."""
  run = as_run_config(cfg)
  a, n = run.attention, math.prod(grid)
  pairs = {}
  if a.num_groups is not None:
    k = a.top_k
    pairs["moga_groups"] = k * n * (k * n / a.num_groups)
  if a.stga_windows is not None:
    groups = temporal_groups(
      shot_frames(grid[0], run.shots if shots is None else shots), a.stga_temporal_group
    )
    pairs["stga"] = float(stga_key_sum(grid, groups, a.stga_windows, a.stga_context_frames))
  if a.frame_attention:
    pairs["frame"] = float(n * grid[1] * grid[2])
  if a.window is not None:
    keys = math.prod(min(w * t, g) for w, t, g in zip(a.window, a.window_tile, grid, strict=True))
    pairs["window"] = float(n * keys)
  return pairs


def model_flops(
  cfg: RunConfig, grid: tuple[int, int, int] | None = None, shots: int | None = None
) -> dict:
  """Whole-model forward FLOPs of one sample (one denoising step), dense and with the
  configured attention block; see the module docstring for what is counted."""
  run = as_run_config(cfg)
  m, a = run.model, run.attention
  if grid is None:
    grid = run.token_grid
  shots = run.shots if shots is None else shots
  n, d, layers = math.prod(grid), m.dim, m.num_layers
  inner = d  # num_heads * head_dim
  channels = m.in_channels
  caption = run.caption_len
  text = shots * caption  # caption tokens of one sample (each shot its own caption)
  patch = math.prod(m.patch)
  pairs = attention_pairs(run, grid, shots)
  sparse_layers = layers - len(m.dense_layers) if pairs else 0
  router_out = 0
  if a.num_groups is not None and sparse_layers:
    router_out = a.num_groups * (m.num_heads if a.per_head_router else 1)
  linear = {  # 2 FLOPs per multiply-add
    "patch_embedding": 2.0 * n * patch * channels * d,
    "head": 2.0 * n * d * patch * channels,
    "text_embedding": 2.0 * text * (m.text_dim * d + d * d),
    "time_embedding": 2.0 * (m.freq_dim * d + d * d + 6 * d * d),
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
    "tokens": n,
    "token_grid": tuple(grid),
    "shots": shots,
    "dense": dense,
    "moga": moga,
    "self_attention_dense": attention_dense,
    "self_attention_moga": attention_moga,
    "self_attention_branches": branches,
    "attention_density": attention_moga / attention_dense,
    "linear": linear,
    "cross_attention_scores": cross_scores,
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
  from moga_jax.train.config_files import load_config_module

  wan1_3b_moga = load_config_module("wan1_3b_moga")

  rows = ("dense", *(f"M={g}" for g in groups))
  ours, density = {row: [] for row in rows}, {row: [] for row in rows[1:]}
  tokens, shots_used, static, fixed, slope = [], [], [], [], []
  for seconds, frames in zip(PAPER_TABLE5["seconds"], PAPER_TABLE5["frames"], strict=True):
    cfg = wan1_3b_moga.get_config("stage2")
    cfg.video.frames = frames
    shots = max(1, round(seconds / shot_seconds)) if shot_seconds else 1
    cfg.video.shots = shots
    grid = latent_and_token_grids(cfg)[1]
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
  rel = {
    row: [o / p - 1 for o, p in zip(vals, paper[row], strict=True)]
    for row, vals in ours.items()
    if row in paper
  }
  x = np.array([1.0 / g for g in groups])
  cells = np.array([paper[f"M={g}"] for g in groups if f"M={g}" in paper])
  fit = (
    {"b": [], "a": []}
    if len(cells) < 2
    else dict(zip(("b", "a"), map(list, np.polyfit(x[: len(cells)], cells, 1)), strict=True))
  )
  return {
    "seconds": paper["seconds"],
    "frames": paper["frames"],
    "tokens": tokens,
    "paper_tokens": paper["tokens"],
    "shots": shots_used,
    "shot_seconds": shot_seconds,
    "pflops": ours,
    "paper_pflops": {row: paper[row] for row in ours if row in paper},
    "relative_difference": rel,
    "attention_density": density,
    "static_density": static,
    "fixed_pflops": fixed,
    "slope_pflops": slope,
    "paper_fit": fit,
  }


def format_table5(t: dict) -> str:
  head = ["", *(f"{s} s" for s in t["seconds"])]
  rows = [
    head,
    ["frames", *map(str, t["frames"])],
    ["tokens", *(f"{n:,}" for n in t["tokens"])],
    ["shots (STGA temporal groups)", *map(str, t["shots"])],
  ]
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
  lines = [
    "Table 5: whole-model forward PFLOPs, Wan2.1-1.3B, 480x832, one sample, one step "
    "(MoGA rows: + 2x2 STGA + per-frame attention)"
  ]
  lines += [
    "  ".join(
      c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    for r in rows
  ]
  lines.append(
    "ours: a = every FLOP that does not depend on M (linears, cross-attention, STGA, "
    "per-frame), b = dense self-attention (router FLOPs, ~1e-4 of a, left out)"
  )
  return "\n".join(lines)
