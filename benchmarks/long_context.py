"""One MoGA attention layer, forward, at the paper's ~580K-token context, on this machine.

  python benchmarks/long_context.py [--heads 4 --head_dim 64 --groups 32 --window]

The default token grid is configs/wan14b_moga_580k.py's (361 x 30 x 52 = 563,160 tokens). The
layer is the real MoGAAttention (q/k/v/o projections, q/k RMS norm, 3D RoPE, per-head router,
group sort, blocked attention, optional 3D window branch) through the chosen implementation.
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

from moga_jax.attention import MoGAAttention

_GRID = flags.DEFINE_list("grid", ["361", "30", "52"], "Token grid T,H,W.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension.")
_GROUPS = flags.DEFINE_integer("groups", 32, "MoGA groups.")
_WINDOW = flags.DEFINE_bool("window", False, "Add the 3D window branch (3x3x3 tiles of 4x4x8).")
_IMPL = flags.DEFINE_string("implementation", None, "Attention implementation (None: best).")
_OUT = flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/"
                           "long_context.json).")

GiB = 2**30


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(argv):
  del argv
  grid = tuple(int(g) for g in _GRID.value)
  tokens, dim = math.prod(grid), _HEADS.value * _HEAD_DIM.value
  window = dict(window=(3, 3, 3), window_tile=(4, 4, 8)) if _WINDOW.value else {}
  layer = MoGAAttention(dim, _HEADS.value, num_groups=_GROUPS.value,
                        implementation=_IMPL.value, rngs=nnx.Rngs(0), **window)
  x = jax.random.normal(jax.random.key(1), (1, tokens, dim), jnp.float32)
  x.block_until_ready()

  forward = nnx.jit(lambda layer, x: layer(x, grid_shape=grid))
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
    "tokens": tokens, "grid": grid, "heads": _HEADS.value, "head_dim": _HEAD_DIM.value,
    "groups": _GROUPS.value, "window": _WINDOW.value,
    "implementation": _IMPL.value or "default", "backend": jax.default_backend(),
    "compile_seconds": round(compile_s, 2), "forward_seconds": round(run_s, 2),
    "xla_temp_bytes": temp, "peak_rss_bytes": _peak_rss_bytes(),
    "dense_one_head_scores_bytes": dense_scores, "balance_loss": float(balance),
    "machine": f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)",
    "jax": jax.__version__,
  }
  rows = [
    ("tokens", f"{tokens:,} ({' x '.join(map(str, grid))})"),
    ("layer", f"{_HEADS.value} heads x {_HEAD_DIM.value}, G={_GROUPS.value}"
              f"{', + window' if _WINDOW.value else ''}, {result['implementation']}"),
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
