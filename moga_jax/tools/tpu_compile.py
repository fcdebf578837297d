"""Compile every attention branch of a config for a real TPU from a CPU host (no TPU needed).

  python -m moga_jax.tools.tpu_compile --config configs/wan14b_moga_580k.py --chip v5e --chip v6e
  python -m moga_jax.tools.tpu_compile --config configs/wan1_3b_moga.py:stage2 --devices 8 \
      --json_out x

Needs `libtpu` (`pip install -e '.[tpu-compile]'`, the version `jax[tpu]` pins): it provides
compile-only TPU devices (`jax.experimental.topologies`). Each branch of the config's attention
block (MoGA's group attention, STGA, per-frame attention, the optional 3D window) is lowered
with `implementation="pallas_tpu"` at the per-device shapes the training step gives it (batch
over data x fsdp, whole sequences with num_heads / (context x tensor) heads under Ulysses), in
bfloat16, forward and backward, and compiled by the real Mosaic and XLA:TPU compilers. Reported
per branch: compile seconds, the scalar-prefetch metadata that must fit SMEM (1 MiB on
v5e/v5p/v6e), and XLA's HBM figures from `compiled.memory_analysis()`. Nothing is allocated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from moga_jax.model.config import AttentionConfig
from moga_jax.parallel import axes
from moga_jax.parallel.sharding import axes_size, ulysses_size
from moga_jax.parallel.tpu_slices import CHIPS, tpu_devices
from moga_jax.tools.flops import shot_frames
from moga_jax.train.config_files import config_path
from moga_jax.train.run_config import RunConfig, as_run_config

SMEM_BYTES = 1 << 20  # per core on v5e, v5p and v6e
BRANCHES = ("group", "stga", "frame", "window")


@dataclasses.dataclass(frozen=True)
class AttentionShapes:
  """What one device's attention sees in a training step of a config."""

  batch: int
  heads: int
  head_dim: int
  grid: tuple[int, int, int]
  shot_frames: tuple[int, ...]
  branches: tuple[str, ...]

  @property
  def tokens(self) -> int:
    return math.prod(self.grid)


def attention_shapes(cfg: RunConfig, devices: int | None = None) -> AttentionShapes:
  """Per-device attention shapes of a run on its mesh (a -1 axis takes `devices`, default 8).
  cfg: a RunConfig (or a ConfigDict, typed here)."""
  run = as_run_config(cfg)
  mesh = run.sharding.mesh_shape
  if -1 in mesh.values():
    mesh = run.sharding.resolve(devices or 8)
  rules = run.sharding.rules
  size = lambda logical: axes_size(mesh, rules.mesh_axes(logical))
  m, a, grid = run.model, run.attention, run.token_grid
  branches = tuple(
    name
    for name, on in (
      ("group", a.num_groups is not None),
      ("stga", a.stga_windows is not None),
      ("frame", a.frame_attention),
      ("window", a.window is not None),
    )
    if on
  )
  return AttentionShapes(
    batch=max(1, run.train.batch_size // size(axes.ACTIVATION_BATCH)),
    heads=m.num_heads // (ulysses_size(mesh, rules) * size(axes.ACTIVATION_HEADS)),
    head_dim=m.dim // m.num_heads,
    grid=tuple(grid),
    shot_frames=tuple(shot_frames(grid[0], run.shots)),
    branches=branches,
  )


def _branch_fn(a: AttentionConfig, shapes: AttentionShapes, branch: str):
  """f(q, k, v, group_ids, shot_ids) -> attention output, for one branch, on the TPU kernel."""
  import pallas_kernels as pk

  kw = dict(implementation="pallas_tpu", interpret=False, backend="tpu")
  if branch == "group":
    return lambda q, k, v, ids, shots: pk.group_attention(
      q, k, v, ids, num_groups=a.num_groups, **kw
    )
  if branch == "stga":
    return lambda q, k, v, ids, shots: pk.shot_window_attention(
      q,
      k,
      v,
      shots,
      grid_shape=shapes.grid,
      spatial_groups=a.stga_windows,
      temporal_group=a.stga_temporal_group,
      context_frames=a.stga_context_frames,
      **kw,
    )
  if branch == "frame":
    return lambda q, k, v, ids, shots: pk.frame_attention(q, k, v, grid_shape=shapes.grid, **kw)
  if branch == "window":
    return lambda q, k, v, ids, shots: pk.window_attention(
      q, k, v, grid_shape=shapes.grid, tile=a.window_tile, window=a.window, **kw
    )
  raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")


def compile_branch(
  attention: AttentionConfig, shapes: AttentionShapes, branch: str, chip: str, dtype=jnp.bfloat16
) -> dict:
  """Compiles forward + backward of one branch for one chip; a dict row (error on failure)."""
  from pallas_kernels.block_sparse.tpu import prefetch_bytes_in_hlo

  devices = tpu_devices(chip, 1)
  mesh = jax.sharding.Mesh(np.array(devices), ("x",))
  placed = jax.NamedSharding(mesh, jax.P())
  b, n = shapes.batch, shapes.tokens
  q = jax.ShapeDtypeStruct((b, n, shapes.heads, shapes.head_dim), dtype, sharding=placed)
  ids = jax.ShapeDtypeStruct((b, n), jnp.int32, sharding=placed)
  shots = jax.ShapeDtypeStruct((b, shapes.grid[0]), jnp.int32, sharding=placed)
  attend = _branch_fn(attention, shapes, branch)

  def loss(q, k, v, ids, shots):
    return attend(q, k, v, ids, shots).astype(jnp.float32).sum()

  row = {
    "chip": chip,
    "branch": branch,
    "batch": b,
    "heads": shapes.heads,
    "tokens": n,
    "head_dim": shapes.head_dim,
    "dtype": jnp.dtype(dtype).name,
  }
  start = time.perf_counter()
  try:
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q, ids, shots).compile()
  except Exception as err:
    row.update(ok=False, error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
    return row
  memory = compiled.memory_analysis()
  row.update(
    ok=True,
    compile_s=round(time.perf_counter() - start, 1),
    smem_prefetch_bytes=prefetch_bytes_in_hlo(compiled.as_text()),
    hbm_argument_bytes=int(memory.argument_size_in_bytes),
    hbm_output_bytes=int(memory.output_size_in_bytes),
    hbm_temp_bytes=int(memory.temp_size_in_bytes),
  )
  return row


def compile_config(
  cfg: RunConfig,
  chips: Sequence[str],
  devices: int | None = None,
  branches: Sequence[str] | None = None,
) -> list[dict]:
  """cfg: a RunConfig (or a ConfigDict, typed here)."""
  run = as_run_config(cfg)
  shapes = attention_shapes(run, devices)
  return [
    compile_branch(run.attention, shapes, branch, chip)
    for chip in chips
    for branch in (branches or shapes.branches)
  ]


def format_rows(rows: list[dict]) -> str:
  mib = lambda n: f"{n / 2**20:,.0f}"
  lines = [
    "| chip | branch | B x heads x tokens | compile s | SMEM prefetch KiB | HBM args MiB "
    "| HBM temp MiB |",
    "|---|---|---|---:|---:|---:|---:|",
  ]
  for r in rows:
    shape = f"{r['batch']} x {r['heads']} x {r['tokens']:,}"
    if r["ok"]:
      lines.append(
        f"| {r['chip']} | {r['branch']} | {shape} | {r['compile_s']} | "
        f"{r['smem_prefetch_bytes'] / 1024:,.1f} | {mib(r['hbm_argument_bytes'])} | "
        f"{mib(r['hbm_temp_bytes'])} |"
      )
    else:
      lines.append(f"| {r['chip']} | {r['branch']} | {shape} | FAILED: {r['error']} | | | |")
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  from absl import flags

  cfg = flags.FLAGS.config
  rows = compile_config(cfg, flags.FLAGS.chip, flags.FLAGS.devices)
  print(format_rows(rows))
  if flags.FLAGS.json_out:
    Path(flags.FLAGS.json_out).write_text(json.dumps(rows, indent=1))
  if not all(r["ok"] for r in rows):
    raise SystemExit(1)


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", config_path("wan14b_moga_580k"), "Model config.")
  flags.DEFINE_multi_string("chip", ["v5e", "v6e"], f"TPU generations ({', '.join(CHIPS)}).")
  flags.DEFINE_integer("devices", None, "Devices for a -1 mesh axis (default 8).")
  flags.DEFINE_string("json_out", None, "Also write the rows as JSON here.")
  app.run(main)
