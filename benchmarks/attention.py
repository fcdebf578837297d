"""Time and memory of group attention vs dense attention; prints a table and writes JSON.

  python benchmarks/attention.py --config configs/attention_bench.py:full [--config.heads=4]
  python benchmarks/attention.py --config configs/attention_bench.py:block   # the paper's block

Each row is one (sequence length, group count, implementation) at random uniform routing. The
"ideal" column is what a perfect sparse kernel would take: the dense time scaled by the share of
the score matrix that group attention needs, sum_g n_g^2 / N^2 (averaged over batch x heads).
Memory is XLA's compiled temporary allocation for the call (inputs and outputs excluded).
TFLOP/s counts useful FLOPs only: 4 * head_dim * sum_g n_g^2 per (batch, head), i.e. the
score and value products inside groups, not padding or skipped tiles.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from moga_jax.cli.logs import quiet_libraries
from pallas_kernels import frame_attention, group_attention, shot_window_attention
from pallas_kernels.metadata import spatial_window_ids, temporal_key_frames

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  str(Path(__file__).parents[1] / "configs" / "attention_bench.py") + ":demo",
  "Benchmark config file, with a preset after the colon.",
)


def time_call(fn, args, repeats: int) -> tuple[float, float | None]:
  """Compiles fn, runs it once to warm up, returns (median seconds, temp bytes)."""
  compiled = jax.jit(fn).lower(*args).compile()
  stats = compiled.memory_analysis()
  temp = None if stats is None else float(stats.temp_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), temp


def _sparsity(ids: np.ndarray, num_groups: int) -> float:
  """Mean over rows of sum_g n_g^2 / N^2: the share of dense work group attention needs."""
  rows = ids.transpose(0, 2, 1).reshape(-1, ids.shape[1])
  counts = np.stack([np.bincount(r, minlength=num_groups) for r in rows]).astype(np.float64)
  return float(np.mean((counts**2).sum(-1)) / ids.shape[1] ** 2)


def _count_rows(cfg) -> int:
  if cfg.block:
    return sum(4 + (seq <= cfg.dense_max_seq) for seq in cfg.seq_lens)
  dense = sum(seq <= cfg.dense_max_seq for seq in cfg.seq_lens)
  grouped = sum(
    impl != "reference" or seq <= cfg.reference_max_seq
    for seq in cfg.seq_lens
    for impl in cfg.implementations
  )
  return dense + grouped * len(cfg.group_counts)


def _dense_row(cfg, q, k, v, **extra) -> dict:
  """The dense baseline's row: jax.nn.dot_product_attention on cfg.dense_implementation."""
  dense = functools.partial(jax.nn.dot_product_attention, implementation=cfg.dense_implementation)
  seconds, temp = time_call(dense, (q, k, v), cfg.repeats)
  return dict(
    seq=q.shape[1],
    groups=None,
    impl="dense",
    time_s=seconds,
    temp_bytes=temp,
    work_share=1.0,
    ideal_s=seconds,
    **extra,
  )


def _rows(cfg):
  """Yields every measurement of the config as a dict."""
  dtype = jnp.dtype(cfg.dtype)
  key = jax.random.key(cfg.seed)
  for seq in cfg.seq_lens:
    shape = (cfg.batch, seq, cfg.heads, cfg.head_dim)
    kq, kk, kv, kid = jax.random.split(jax.random.fold_in(key, seq), 4)
    q, k, v = (jax.random.normal(s, shape, jnp.float32).astype(dtype) for s in (kq, kk, kv))
    dense_time = None
    if seq <= cfg.dense_max_seq:
      row = _dense_row(cfg, q, k, v)
      dense_time = row["time_s"]
      yield row
    for groups in cfg.group_counts:
      ids = jax.random.randint(jax.random.fold_in(kid, groups), shape[:3], 0, groups)
      share = _sparsity(np.asarray(ids), groups)
      for impl in cfg.implementations:
        if impl == "reference" and seq > cfg.reference_max_seq:
          continue
        fn = lambda q, k, v, ids, impl=impl, groups=groups: group_attention(
          q, k, v, ids, num_groups=groups, implementation=impl, tile=cfg.tile
        )
        seconds, temp = time_call(fn, (q, k, v, ids), cfg.repeats)
        yield dict(
          seq=seq,
          groups=groups,
          impl=impl,
          time_s=seconds,
          temp_bytes=temp,
          work_share=share,
          ideal_s=None if dense_time is None else dense_time * share,
        )


def _block_inputs(cfg, seq: int):
  """q, k, v, shared routing (ids, gates) and shots for one row of the `block` preset: frames
  of block_frame tokens, a new shot every block_shot_frames frames."""
  frames = seq // (cfg.block_frame[0] * cfg.block_frame[1])
  grid = (frames, *cfg.block_frame)
  shape = (cfg.batch, seq, cfg.heads, cfg.head_dim)
  kq, kk, kv, kid, kg = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), seq), 5)
  q, k, v = (jax.random.normal(s, shape, jnp.float32).astype(cfg.dtype) for s in (kq, kk, kv))
  ids = jax.random.randint(kid, (cfg.batch, seq), 0, cfg.block_groups)
  gates = jax.random.uniform(kg, (cfg.batch, seq, 1), minval=0.2, maxval=1.0)
  shots = jnp.broadcast_to(jnp.arange(frames) // cfg.block_shot_frames, (cfg.batch, frames))
  return grid, (q, k, v), ids, gates, shots.astype(jnp.int32)


def _block_shares(cfg, grid, ids, shots) -> dict[str, float]:
  """Each branch's share of the dense score matrix (pairs it must compute / N^2)."""
  frames, height, width = grid
  n = frames * height * width
  groups = _sparsity(np.asarray(ids)[..., None], cfg.block_groups)
  window_sizes = np.bincount(spatial_window_ids(height, width, cfg.block_windows).ravel())
  lo, hi = (
    np.asarray(a) for a in temporal_key_frames(shots, temporal_group=None, context_frames=1)
  )
  # A token of window w sees window_sizes[w] tokens in each of hi - lo frames.
  stga = float(np.mean((hi - lo).sum(1)) * (window_sizes**2).sum() / n**2)
  frame = frames * (height * width) ** 2 / n**2
  return {"moga": groups, "stga": stga, "frame": frame, "paper": groups + stga + frame}


def _block_branches(cfg, grid) -> dict:
  """The paper's three branches and their mean, as functions of (q, k, v, ids, gates, shots).
  Routing and shots are arguments, not constants: closed over, XLA would fold the routing sort
  and the tile metadata into the program at compile time and time less than a model runs."""
  ops = dict(implementation=cfg.implementations[0], tile=cfg.tile)
  branches = {
    "moga": lambda q, k, v, ids, gates, shots: (
      group_attention(q, k, v, ids, num_groups=cfg.block_groups, **ops) * gates[..., None]
    ),
    "stga": lambda q, k, v, ids, gates, shots: shot_window_attention(
      q, k, v, shots, grid_shape=grid, spatial_groups=cfg.block_windows, **ops
    ),
    "frame": lambda q, k, v, ids, gates, shots: frame_attention(q, k, v, grid_shape=grid, **ops),
  }
  parts = tuple(branches.values())
  branches["paper"] = lambda *args: sum(f(*args) for f in parts) / len(parts)
  return branches


def _block_rows(cfg):
  """The paper's block and each of its branches, forward, on one implementation."""
  for seq in cfg.seq_lens:
    grid, (q, k, v), ids, gates, shots = _block_inputs(cfg, seq)
    shares = _block_shares(cfg, grid, ids, shots)
    dense_time = None
    if seq <= cfg.dense_max_seq:
      row = _dense_row(cfg, q, k, v, grid=grid)
      dense_time = row["time_s"]
      yield row
    for name, fn in _block_branches(cfg, grid).items():
      seconds, temp = time_call(fn, (q, k, v, ids, gates, shots), cfg.repeats)
      yield dict(
        seq=seq,
        groups=cfg.block_groups,
        impl=name,
        time_s=seconds,
        temp_bytes=temp,
        work_share=shares[name],
        grid=grid,
        ideal_s=None if dense_time is None else dense_time * shares[name],
      )


def _fmt(value, spec: str, missing: str = "-") -> str:
  return missing if value is None else format(value, spec)


def _table(rows) -> str:
  header = (
    "seq",
    "G",
    "impl",
    "time s",
    "ideal s",
    "ideal/time",
    "vs dense",
    "work share",
    "TFLOP/s",
    "temp MiB",
  )
  lines = [header]
  dense = {r["seq"]: r["time_s"] for r in rows if r["impl"] == "dense"}
  for r in rows:
    d = dense.get(r["seq"])
    lines.append(
      (
        str(r["seq"]),
        _fmt(r["groups"], "d"),
        r["impl"],
        f"{r['time_s']:.3f}",
        _fmt(r["ideal_s"], ".3f"),
        _fmt(None if r["ideal_s"] is None else r["ideal_s"] / r["time_s"], ".0%"),
        "-" if d is None else f"{d / r['time_s']:.2f}x",
        f"{r['work_share']:.3f}",
        f"{r['tflops']:.3g}",
        _fmt(None if r["temp_bytes"] is None else r["temp_bytes"] / 2**20, ".0f"),
      )
    )
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  out = [
    "| " + " | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) + " |"
    for line in lines
  ]
  out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(out)


def _target(cfg, rows) -> list[str]:
  """The issue's speed target: G=16 at least target_speedup x faster than G=1, same impl."""
  verdicts = []
  for impl in cfg.implementations:
    t = {r["groups"]: r["time_s"] for r in rows if r["impl"] == impl and r["seq"] == cfg.target_seq}
    if 1 in t and 16 in t:
      ratio = t[1] / t[16]
      verdict = "met" if ratio >= cfg.target_speedup else "MISSED"
      verdicts.append(
        f"target {verdict}: {impl} at {cfg.target_seq} tokens, 16 groups run "
        f"{ratio:.1f}x faster than 1 group (target {cfg.target_speedup:g}x, "
        "ideal ~16x)"
      )
  return verdicts


def main(argv):
  del argv
  quiet_libraries()  # jax would log every backend it fails to find
  cfg = _CONFIG.value
  print(
    f"jax {jax.__version__} on {jax.default_backend()} ({platform.processor() or 'cpu'}, "
    f"{os.cpu_count()} cores); batch {cfg.batch}, {cfg.heads} heads, head_dim "
    f"{cfg.head_dim}, {cfg.dtype}, tile {cfg.tile}",
    flush=True,
  )
  if cfg.block:
    print(
      f"the paper's block: M = {cfg.block_groups} (shared routing), STGA "
      f"{cfg.block_windows[0]}x{cfg.block_windows[1]} windows, frames of "
      f"{cfg.block_frame[0]}x{cfg.block_frame[1]} tokens, a shot every "
      f"{cfg.block_shot_frames} frames; G column = M; impl column = branch",
      flush=True,
    )
  rows = []
  flops_per_share = 4 * cfg.batch * cfg.heads * cfg.head_dim  # x share x N^2
  measurements = _block_rows(cfg) if cfg.block else _rows(cfg)
  for row in tqdm(
    measurements,
    desc=f"attention benchmark ({cfg.preset})",
    unit="row",
    total=_count_rows(cfg),
    file=sys.stdout,
  ):
    row["tflops"] = flops_per_share * row["work_share"] * row["seq"] ** 2 / row["time_s"] / 1e12
    rows.append(row)
    tqdm.write(
      f"  seq {row['seq']:>6}  G {_fmt(row['groups'], '>3d', '  -')}  "
      f"{row['impl']:<9} {row['time_s']:8.3f} s",
      file=sys.stdout,
    )
  print()
  print(_table(rows))
  verdicts = _target(cfg, rows)
  for line in verdicts:
    print(line)
  out = Path(cfg.out or Path(__file__).parent / "results" / f"attention_{cfg.preset}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(
    json.dumps(
      {
        "config": cfg.to_dict(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "targets": verdicts,
      },
      indent=2,
      default=list,
    )
  )
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
