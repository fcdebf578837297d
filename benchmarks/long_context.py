"""One MoGA attention layer, forward, at the paper's ~580K-token context, on this machine.

  python benchmarks/long_context.py [--heads 4 --head_dim 64 --groups 32 --window]
  python benchmarks/long_context.py --paper_block --groups 20   # + 4x4 STGA and per-frame

The default token grid is configs/wan14b_moga_580k.py's (361 x 30 x 52 = 563,160 tokens). The
layer is the real MoGAAttention (q/k/v/o projections, q/k RMS norm, 3D RoPE, router, group
sort, blocked attention) through the chosen implementation: by default MoGA alone with per-head
routing (what the README's table measured), with --paper_block the paper's block (shared
routing, 4x4 STGA windows over 8 shots, per-frame attention), optionally plus the 3D window.
Reports compile and run time, XLA's temporary allocation and the process's peak resident
memory, next to what dense attention would need for one head's score matrix. Prints a table and
writes JSON (benchmarks/results/long_context.json).
"""

from __future__ import annotations

import json
import math
import platform
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from moga_jax.model.attention import MoGAAttention

_GRID = flags.DEFINE_list("grid", ["361", "30", "52"], "Token grid T,H,W.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension.")
_GROUPS = flags.DEFINE_integer("groups", 32, "MoGA groups.")
_WINDOW = flags.DEFINE_bool("window", False, "Add the 3D window branch (3x3x3 tiles of 4x4x8).")
_PAPER = flags.DEFINE_bool(
  "paper_block",
  False,
  "The paper's block (MoGA with shared routing + "
  "4x4 STGA over 8 shots + per-frame) instead of MoGA alone.",
)
_IMPL = flags.DEFINE_string("implementation", None, "Attention implementation (None: best).")
_OUT = flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/long_context.json).")

GiB = 2**30


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(argv):
  del argv
  grid = tuple(int(g) for g in _GRID.value)
  tokens, dim = math.prod(grid), _HEADS.value * _HEAD_DIM.value
  window = dict(window=(3, 3, 3), window_tile=(4, 4, 8)) if _WINDOW.value else {}
  if _PAPER.value:
    block = dict(per_head_router=False, stga_windows=(4, 4), frame_attention=True)
  else:
    block = dict(per_head_router=True, stga_windows=None, frame_attention=False)
  layer = MoGAAttention(
    dim,
    _HEADS.value,
    num_groups=_GROUPS.value,
    implementation=_IMPL.value,
    rngs=nnx.Rngs(0),
    **block,
    **window,
  )
  x = jax.random.normal(jax.random.key(1), (1, tokens, dim), jnp.float32)
  x.block_until_ready()
  shots = jnp.minimum(jnp.arange(grid[0]) * 8 // grid[0], 7)[None].astype(jnp.int32)

  forward = nnx.jit(lambda layer, x: layer(x, grid_shape=grid, frame_shot=shots))
  start = time.perf_counter()
  compiled = forward.lower(layer, x).compile() if hasattr(forward, "lower") else None
  compile_s = time.perf_counter() - start
  temp = compiled.memory_analysis().temp_size_in_bytes if compiled is not None else None
  start = time.perf_counter()
  out, balance = forward(layer, x)
  out.block_until_ready()
  run_s = time.perf_counter() - start
  if not bool(jnp.isfinite(out).all()):
    raise RuntimeError("the layer produced non-finite outputs")

  dense_scores = tokens * tokens * 4  # one head's float32 score matrix
  result = {
    "tokens": tokens,
    "grid": grid,
    "heads": _HEADS.value,
    "head_dim": _HEAD_DIM.value,
    "groups": _GROUPS.value,
    "window": _WINDOW.value,
    "paper_block": _PAPER.value,
    "implementation": _IMPL.value or "default",
    "backend": jax.default_backend(),
    "compile_seconds": round(compile_s, 2),
    "forward_seconds": round(run_s, 2),
    "xla_temp_bytes": temp,
    "peak_rss_bytes": _peak_rss_bytes(),
    "dense_one_head_scores_bytes": dense_scores,
    "balance_loss": float(balance),
    "machine": f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)",
    "jax": jax.__version__,
  }
  rows = [
    ("tokens", f"{tokens:,} ({' x '.join(map(str, grid))})"),
    (
      "layer",
      f"{_HEADS.value} heads x {_HEAD_DIM.value}, G={_GROUPS.value}"
      f"{', + window' if _WINDOW.value else ''}, {result['implementation']}",
    ),
    ("compile", f"{compile_s:.1f} s"),
    ("forward", f"{run_s:.1f} s"),
    ("XLA temporaries", "n/a" if temp is None else f"{temp / GiB:.2f} GiB"),
    ("peak resident memory", f"{result['peak_rss_bytes'] / GiB:.2f} GiB"),
    ("dense: one head's scores", f"{dense_scores / 2**40:.2f} TiB"),
  ]
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  out = Path(_OUT.value or Path(__file__).parent / "results" / "long_context.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
