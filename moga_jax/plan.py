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

FLOP accounting lives in `moga_jax.flops`.
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

from moga_jax.config_checks import validate_sharding
from moga_jax.config_files import config_path
from moga_jax.flops import (
  format_table5,
  latent_and_token_grids,
  model_flops,
  shot_frames,
  table5,
  temporal_groups,
)
from moga_jax.sharding import ShardingRules, make_mesh
from moga_jax.training import abstract_train_state, latent_loss_fn, make_train_step

_CONFIG = config_flags.DEFINE_config_file(
  "config", config_path("wan14b_moga_580k"), "Config with video, model, train and sharding."
)
_MESH = flags.DEFINE_string(
  "mesh",
  None,
  "Mesh axis sizes, e.g. fsdp=8,context=8 (others 1); default: the config's sharding.mesh.",
)
_DEVICES = flags.DEFINE_integer("devices", None, "Device count when the mesh has a -1 axis.")
_AOT = flags.DEFINE_bool(
  "aot",
  False,
  "Compile the training step for a fake CPU mesh and report XLA's per-device memory analysis.",
)
_AOT_TPU = flags.DEFINE_string(
  "aot_tpu",
  None,
  "With --aot: compile for a slice of this TPU "
  "generation (v5e, v5p, v6e; compile-only devices from libtpu, "
  "the tpu-compile extra) instead of fake CPU devices.",
)
_JSON = flags.DEFINE_bool(
  "json", False, "Print only the plan (or Table 5) as one JSON object on stdout, no other text."
)
_JSON_OUT = flags.DEFINE_string(
  "json_out", None, "Also write the plan (or Table 5) as JSON to this path."
)
_TABLE5 = flags.DEFINE_bool(
  "table5",
  False,
  "Compute the paper's Table 5 (Wan2.1-1.3B, 480x832, "
  "5-30 s, dense and M = 5, 10, 20) and print it beside the paper's; "
  "--config and --mesh are not used.",
)
_SHOT_SECONDS = flags.DEFINE_float(
  "table5_shot_seconds",
  5.0,
  "Table 5's shot layout: one shot "
  "(= one STGA temporal group) per this many seconds of video, "
  "rounded; 0: one shot per clip.",
)

GiB = 2**30


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
  return sum(
    math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    for x in jax.tree.leaves(abstract)
  )


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
    "stga_temporal_groups": (
      temporal_groups(shots, a.get("stga_temporal_group"))
      if a.get("stga_windows") is not None
      else None
    ),
    "flops_per_sample_forward": flops,
  }


def make_plan(
  cfg, mesh_shape: dict[str, int], *, aot: bool = False, device_list: list | None = None
) -> dict:
  """Everything the planner prints, as a dict (also used by the tests). device_list: the
  devices to plan on (default: this process's first ones), e.g. compile-only TPU devices."""
  devices = math.prod(mesh_shape.values())
  mesh = make_mesh(mesh_shape, devices=device_list or jax.devices()[:devices])
  rules = ShardingRules.from_config(cfg.sharding.rules)
  latent, grid = latent_and_token_grids(cfg)
  tokens = math.prod(grid)
  m = cfg.model
  ts = abstract_train_state(cfg, mesh, rules)
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
  block = (
    batch_local
    * (7 * tokens * heads_local * head_dim + 2 * seq_local * m.ffn_dim // size("activation_mlp"))
    * f32
  )
  plan = {
    "latent_grid": latent,
    "token_grid": grid,
    "tokens": tokens,
    "mesh": dict(mesh.shape),
    "devices": devices,
    "parameters": n_params,
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
    key = jax.ShapeDtypeStruct(
      (), jax.random.key(0).dtype, sharding=jax.NamedSharding(mesh, jax.P())
    )
    start = time.perf_counter()
    device = mesh.devices.flat[0].device_kind
    try:
      with jax.set_mesh(mesh):
        compiled = step.lower(ts.state, batch, key).compile()
    except jax.errors.JaxRuntimeError as err:  # e.g. a compile-time HBM OOM: that is the answer
      plan["aot"] = {
        "device": device,
        "compile_seconds": round(time.perf_counter() - start, 1),
        "error": str(err).splitlines()[0][:400],
      }
      return plan
    analysis = compiled.memory_analysis()
    plan["aot"] = {
      "device": device,
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
  if "aot" in plan and "error" in plan["aot"]:
    a = plan["aot"]
    lines += [
      f"ahead-of-time compile of the training step for {a['device']} FAILED after "
      f"{a['compile_seconds']} s: {a['error']}"
    ]
  elif "aot" in plan:
    a = plan["aot"]
    lines += [
      f"ahead-of-time compile of the training step for {a['device']} "
      f"({a['compile_seconds']} s), per device:",
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
    lines.append(
      f"    STGA: {len(plan['shot_frames'])} shot(s) of {plan['shot_frames']} latent "
      f"frames (assumed equal), temporal groups {plan['stga_temporal_groups']}"
    )
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
    raise app.UsageError(
      f"unexpected arguments {argv[1:]}; --json takes no value (it prints "
      "the JSON), --json_out PATH writes it to a file"
    )
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
  device_list = None
  if _AOT_TPU.value:
    if not _AOT.value:
      raise app.UsageError("--aot_tpu goes with --aot")
    from moga_jax.tpu_compile import tpu_devices

    device_list = tpu_devices(_AOT_TPU.value, devices)
  else:
    # Fake CPU devices for the mesh; must happen before jax starts its backend.
    jax.config.update("jax_num_cpu_devices", devices)
    if jax.device_count() < devices:
      raise ValueError(f"the mesh needs {devices} devices; this process has {jax.device_count()}")
  cfg.sharding.mesh = mesh
  shape = validate_sharding(cfg, devices)
  plan = make_plan(cfg, shape, aot=_AOT.value, device_list=device_list)
  _emit(plan, format_plan(plan))


if __name__ == "__main__":
  app.run(main)
