"""The first thing to run on a GPU: are the compiled Triton kernels right, and how fast are they?

  make gpu-check            # on a GPU machine (under 10 minutes on one H100)
  make gpu-check CPU=1      # the same script on CPU, kernels in Pallas interpret mode, small

1. Correctness: every attention op on `implementation="pallas_gpu"` against the dense masked
   reference, float32 and bfloat16, forward and the gradients in q, k and v, on fresh random
   inputs: uniform, skewed and many small groups, routing shared by the heads, the 3D window
   and STGA. A row fails when max |kernel - reference| exceeds the dtype's tolerance times
   max |reference|; the script exits non-zero if any row fails.
2. Speed: group attention (8 heads, head_dim 128, G 16, uniform routing, bf16) at 32K and 131K
   tokens against dense attention (cuDNN on GPU, XLA on CPU), forward and forward + backward.
   On CPU the sizes are tiny and the kernels interpreted: the times only show the path runs.

Writes OUT/gpu_check.json (every row) and prints two tables. OUT defaults to $OUT when set (the
device runner's output folder), else benchmarks/results.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).parent))
from attention import time_call

from pallas_kernels import group_attention, shot_window_attention, window_attention

_CPU = flags.DEFINE_bool("cpu", False, "Run on CPU in Pallas interpret mode, at small sizes.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: $OUT, else benchmarks/results).")
_PARTS = flags.DEFINE_enum(
  "parts", "all", ["all", "check", "speed"], "Run the correctness checks, the speed table, or both."
)

# Max |error| / max |reference|. On GPU, float32 dots may run in TF32 (10-bit mantissa).
TOLERANCE = {"float32": {"cpu": 1e-5, "gpu": 5e-3}, "bfloat16": {"cpu": 2e-2, "gpu": 2e-2}}


def _inputs(key, shape, dtype):
  keys = jax.random.split(key, 4)
  q, k, v, do = (jax.random.normal(s, shape, jnp.float32).astype(dtype) for s in keys)
  return (q, k, v), do


def _skewed_ids(key, shape, groups: int):
  """One big group (about half the tokens), the rest spread over the others."""
  weights = 0.5 ** np.arange(groups)
  logits = jnp.log(jnp.asarray(weights / weights.sum(), jnp.float32))
  return jax.random.categorical(key, logits, shape=shape).astype(jnp.int32)


def cases(small: bool, dtype: str) -> dict:
  """name -> (op(q, k, v, implementation=, interpret=), q shape). The ops pick their own tiles;
  the 3D window's is given: 128 tokens, 64 in float32 (what fits the GPU's shared memory)."""
  b, h, d = (1, 2, 64) if small else (2, 4, 128)
  n = 512 if small else 8192
  grid = (8, 8, 8) if small else (8, 32, 32)
  window_tile = (1, 4, 8) if small else (1, 8 if dtype == "bfloat16" else 4, 16)
  key = jax.random.key(0)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  ids = lambda g: jax.random.randint(k1, (b, n, h), 0, g)
  shots = jnp.array([[0, 0, 0, 1, 1, 2, 2, 2]] * b, jnp.int32)
  return {
    "groups uniform (G 8, per head)": (
      lambda q, k, v, **kw: group_attention(q, k, v, ids(8), num_groups=8, **kw),
      (b, n, h, d),
    ),
    "groups skewed (G 8)": (
      lambda q, k, v, **kw: group_attention(
        q, k, v, _skewed_ids(k2, (b, n, h), 8), num_groups=8, **kw
      ),
      (b, n, h, d),
    ),
    "many small groups (G 64)": (
      lambda q, k, v, **kw: group_attention(
        q, k, v, jax.random.randint(k3, (b, n, h), 0, 64), num_groups=64, **kw
      ),
      (b, n, h, d),
    ),
    "shared routing (G 16)": (
      lambda q, k, v, **kw: group_attention(
        q, k, v, jax.random.randint(k4, (b, n), 0, 16), num_groups=16, **kw
      ),
      (b, n, h, d),
    ),
    "3D window": (
      lambda q, k, v, **kw: window_attention(
        q, k, v, grid_shape=grid, tile=window_tile, window=(3, 1, 1), **kw
      ),
      (b, int(np.prod(grid)), h, d),
    ),
    "STGA (2x2, 3 shots)": (
      lambda q, k, v, **kw: shot_window_attention(
        q, k, v, shots, grid_shape=grid, spatial_groups=(2, 2), **kw
      ),
      (b, int(np.prod(grid)), h, d),
    ),
  }


def _error(got, want) -> float:
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _check_case(name: str, op, shape, dtype: str, seed: int, interpret: bool, device: str) -> dict:
  (q, k, v), do = _inputs(jax.random.key(seed), shape, jnp.dtype(dtype))

  def vjp(impl):
    run = lambda q, k, v: op(
      q, k, v, implementation=impl, interpret=interpret if impl != "reference" else None
    )
    out, pull = jax.vjp(run, q, k, v)
    return (out, *pull(do))

  start = time.perf_counter()
  got = jax.jit(lambda: vjp("pallas_gpu"))()
  want = jax.jit(lambda: vjp("reference"))()
  errors = [_error(g, w) for g, w in zip(got, want, strict=True)]
  finite = all(bool(np.isfinite(np.asarray(g, np.float32)).all()) for g in got)
  tolerance = TOLERANCE[dtype][device]
  return dict(
    case=name,
    dtype=dtype,
    shape=list(shape),
    out_error=errors[0],
    dq_error=errors[1],
    dk_error=errors[2],
    dv_error=errors[3],
    tolerance=tolerance,
    ok=finite and max(errors) <= tolerance,
    seconds=round(time.perf_counter() - start, 2),
  )


def check(small: bool, interpret: bool, device: str) -> list[dict]:
  rows = []
  for dtype in ("float32", "bfloat16"):
    for i, (name, (op, shape)) in enumerate(cases(small, dtype).items()):
      row = _check_case(name, op, shape, dtype, 100 + i, interpret, device)
      rows.append(row)
      worst = max(row[f] for f in ("out_error", "dq_error", "dk_error", "dv_error"))
      print(
        f"  {name:<32} {dtype:<9} max error {worst:.2e} {'ok' if row['ok'] else 'FAILED'}",
        flush=True,
      )
  return rows


def speed(small: bool, interpret: bool, device: str) -> list[dict]:
  heads, head_dim, groups = (2, 64, 4) if small else (8, 128, 16)
  seqs = (1024, 2048) if small else (32_768, 131_072)
  dense_impl = "cudnn" if device == "gpu" else "xla"
  rows = []
  for seq in seqs:
    shape = (1, seq, heads, head_dim)
    (q, k, v), _ = _inputs(jax.random.key(seq), shape, jnp.bfloat16)
    # The routing is an argument, not a constant closed over: XLA would constant-fold the
    # layout's argsort into the compile (seconds at 32K tokens, minutes beyond).
    ids = jax.random.randint(jax.random.key(seq + 1), (1, seq, heads), 0, groups)
    ops = {
      "dense": lambda q, k, v, ids: jax.nn.dot_product_attention(
        q, k, v, implementation=dense_impl
      ),
      "pallas_gpu": lambda q, k, v, ids: group_attention(
        q, k, v, ids, num_groups=groups, implementation="pallas_gpu", interpret=interpret
      ),
    }
    for name, op in ops.items():
      for mode, fn in (("forward", op), ("forward+backward", _grads(op))):
        try:
          seconds, temp = time_call(fn, (q, k, v, ids), repeats=1 if small else 5)
        except Exception as err:
          rows.append(dict(seq=seq, op=name, mode=mode, error=str(err).splitlines()[0][:200]))
          continue
        rows.append(
          dict(
            seq=seq,
            op=name,
            mode=mode,
            seconds=seconds,
            temp_bytes=temp,
            groups=groups if name != "dense" else None,
          )
        )
        print(f"  {seq:>7} {name:<10} {mode:<16} {seconds * 1e3:10.2f} ms", flush=True)
  return rows


def _grads(op):
  """(q, k, v, ids) -> the gradients in q, k and v of sum(op(q, k, v, ids))."""
  return jax.grad(
    lambda q, k, v, ids: op(q, k, v, ids).astype(jnp.float32).sum(), argnums=(0, 1, 2)
  )


def speed_table(rows: list[dict]) -> str:
  lines = [
    "| tokens | mode | dense ms | pallas_gpu ms | dense / pallas_gpu |",
    "|---:|---|---:|---:|---:|",
  ]
  for seq in sorted({r["seq"] for r in rows}):
    for mode in ("forward", "forward+backward"):
      got = {r["op"]: r.get("seconds") for r in rows if r["seq"] == seq and r["mode"] == mode}
      dense, ours = got.get("dense"), got.get("pallas_gpu")
      fmt = lambda s: "-" if s is None else f"{s * 1e3:.2f}"
      ratio = "-" if dense is None or ours is None else f"{dense / ours:.2f}x"
      lines.append(f"| {seq:,} | {mode} | {fmt(dense)} | {fmt(ours)} | {ratio} |")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  device = "cpu" if _CPU.value else jax.default_backend()
  if device != "cpu" and device != "gpu":
    raise SystemExit(f"gpu_check needs a GPU (or --cpu), found backend {device!r}")
  if device == "gpu" and _CPU.value:
    raise SystemExit("--cpu was given on a GPU machine")
  small, interpret = device == "cpu", device == "cpu"
  out = Path(_OUT.value or os.environ.get("OUT") or Path(__file__).parent / "results")
  out.mkdir(parents=True, exist_ok=True)
  print(f"gpu_check on {device} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
  start = time.perf_counter()
  checks = []
  if _PARTS.value != "speed":
    print("correctness (pallas_gpu vs the dense masked reference):")
    checks = check(small, interpret, device)
  timings = []
  if _PARTS.value != "check":
    print("speed (bf16, uniform routing):")
    timings = speed(small, interpret, device)
    print(speed_table(timings))
  suffix = "" if _PARTS.value == "all" else f"_{_PARTS.value}"
  path = out / f"gpu_check{'_cpu' if small else ''}{suffix}.json"
  path.write_text(
    json.dumps(
      {
        "device": jax.devices()[0].device_kind,
        "backend": device,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "interpret": interpret,
        "seconds": round(time.perf_counter() - start, 1),
        "checks": checks,
        "speed": timings,
      },
      indent=1,
    )
  )
  failed = [f"{r['case']} {r['dtype']}" for r in checks if not r["ok"]]
  print(f"wrote {path}; {len(checks) - len(failed)}/{len(checks)} checks passed")
  if failed:
    raise SystemExit(f"FAILED: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
