"""Plan a run before renting the machines: tokens, parameters, per-device memory and
whole-model FLOPs for a config on a mesh, and (--aot) an ahead-of-time compile of the training
step.

  python -m moga_jax.tools.plan --config configs/wan14b_moga_580k.py \
      [--mesh fsdp=8,context=8] [--aot]
  python -m moga_jax.tools.plan --config configs/wan1_3b_moga.py:stage2 --json   # one JSON object
  python -m moga_jax.tools.plan --table5                # the paper's Table 5, ours beside theirs

Parameter, optimizer and gradient bytes per device are exact (from the shardings the training
step uses). Activation bytes are an estimate of what remat keeps (one hidden state per block
boundary) plus one block's working set. --aot lowers and compiles the real training step for a
mesh of fake CPU devices (`jax.jit(step).lower(abstract inputs).compile()`) and prints XLA's
memory_analysis() per device; nothing is allocated, but compiling the full model takes minutes.

FLOP accounting lives in `moga_jax.tools.flops`.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from moga_jax.errors import InputError
from moga_jax.parallel import axes
from moga_jax.parallel.sharding import ShardingRules, make_mesh, ulysses_size
from moga_jax.tools.flops import (
  format_table5,
  latent_and_token_grids,
  model_flops,
  shot_frames,
  table5,
  temporal_groups,
)
from moga_jax.train.config_files import config_path
from moga_jax.train.run_config import RunConfig, as_run_config
from moga_jax.train.state import abstract_train_state, latent_loss_fn, make_train_step

_CONFIG = config_flags.DEFINE_config_file(
  "config", config_path("wan14b_moga_580k"), "Config with video, model, train and sharding."
)
_MESH = flags.DEFINE_string(
  "mesh",
  None,
  "Mesh axis sizes, e.g. fsdp=8,context=8 (others 1); default: the config's sharding.mesh.",
)
_DEVICES = flags.DEFINE_integer("devices", None, "Device count when the mesh has a -1 axis.")
_CHIPS = flags.DEFINE_integer(
  "chips",
  None,
  "With --aot_tpu: the slice's chip count (default: the config's sharding.tpu_slice when it is "
  "of the same generation, else the mesh's size).",
)
_AOT = flags.DEFINE_bool(
  "aot",
  False,
  "Compile the training step for a fake CPU mesh and report XLA's per-device memory analysis.",
)
_AOT_TPU = flags.DEFINE_string(
  "aot_tpu",
  None,
  "Plan for a slice of this TPU generation (v5e, v5p, v6e, or a slice name such as v5e-8; "
  "compile-only devices from libtpu, the tpu-compile extra) instead of fake CPU devices; with "
  "--aot compile for it, report the per-chip peak against the chip's HBM and exit 1 when it "
  "does not fit.",
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
# A step fits a chip when its per-chip peak is at most this fraction of the chip's HBM (the rest
# is headroom for XLA's runtime reservations and fragmentation).
FIT_FRACTION = 0.9


def _abstract_batch(run: RunConfig, latent, batch_sharding) -> dict:
  b, v, m = run.train.batch_size, run.video, run.model
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


# What one block's backward pass holds on a chip, in units of: a float32 [tokens per chip, dim]
# buffer (the residual stream, norms, modulations), a float32 [FFN chunk, ffn_dim] one, one
# attention tensor over the whole sequence for the chip's heads (q, k, v, the layouts, the
# output: [tokens, heads per chip x head_dim] in the compute dtype), one block's float32
# weights (gathered from their FSDP shards, and their gradients before the reduce-scatter), and
# the chip's float32 weights (the optimizer update's temporaries: clipped gradients, new
# moments, the update).
# Fitted (least squares, `python benchmarks/tpu_fit.py --fit`) to the compiled training steps
# in benchmarks/results/tpu_fit.json (the Wan configs on their slices and smaller ones, under
# remat); the planner's peak agrees with the compiler's within 25% on each of those rows, and
# may not on configs far from them (no remat, other width ratios).
WORKING_SET = {
  "hidden": 17.61,
  "ffn": 3.93,
  "attention": 11.56,
  "layer_weights": 0.0,
  "weights_per_chip": 3.73,
}


def working_set_units(
  run: RunConfig,
  mesh_shape: dict[str, int],
  rules: ShardingRules,
  tokens: int,
  n_params: int,
  param_bytes: int,
) -> dict[str, int]:
  """The bytes of one unit of each WORKING_SET term on a chip."""
  m = run.model
  size = lambda logical: math.prod(mesh_shape[a] for a in rules.mesh_axes(logical))
  batch_local = max(1, run.train.batch_size // size(axes.ACTIVATION_BATCH))
  seq_local = tokens // size(axes.ACTIVATION_LENGTH)
  chunk = min(seq_local, m.ffn_token_chunk or seq_local)
  compute = m.dtype.itemsize
  heads_local = m.num_heads // (ulysses_size(mesh_shape, rules) * size(axes.ACTIVATION_HEADS))
  return {
    "hidden": batch_local * seq_local * m.dim * 4,
    "ffn": batch_local * chunk * m.ffn_dim // size(axes.ACTIVATION_MLP) * 4,
    "attention": batch_local * tokens * heads_local * (m.dim // m.num_heads) * compute,
    "layer_weights": n_params // m.num_layers * 4,
    "weights_per_chip": param_bytes,
  }


def activation_estimate(
  run: RunConfig,
  mesh_shape: dict[str, int],
  rules: ShardingRules,
  tokens: int,
  n_params: int,
  param_bytes: int,
) -> dict:
  """Per-chip activation bytes of a training step: the saved block inputs (on the device, or
  on the host under "offload_block_input") and one block's backward working set."""
  m = run.model
  units = working_set_units(run, mesh_shape, rules, tokens, n_params, param_bytes)
  block = int(sum(WORKING_SET[k] * units[k] for k in WORKING_SET))
  hidden, attention = units["hidden"], units["attention"]
  qkv = 3 * hidden // 4 * m.dtype.itemsize
  remat = m.remat
  saved = {
    "none": block,  # every block's working set stays for the backward pass
    "full": hidden,
    "offload_block_input": 0,
    "save_qkv": hidden + qkv,
    "save_attention": hidden + qkv + 3 * attention,
  }[remat]
  return {
    "activations_device": saved * m.num_layers + (block if remat != "none" else 0),
    "activations_host": hidden * m.num_layers if remat == "offload_block_input" else 0,
    "working_set": block if remat != "none" else 0,  # one block's backward, in the above
    "working_set_units": units,
  }


def flops_summary(run: RunConfig, grid: tuple[int, int, int]) -> dict:
  """The FLOPs part of the plan (no model is built): whole-model PFLOPs dense and with the
  configured block, attention density, the shot layout used and the full breakdown."""
  flops = model_flops(run, grid)
  a = run.attention
  shots = shot_frames(grid[0], flops["shots"])
  return {
    "pflops_dense": flops["dense"] / 1e15,
    "pflops_moga": flops["moga"] / 1e15,
    "attention_density": flops["attention_density"],
    "shot_frames": shots,
    "stga_temporal_groups": (
      temporal_groups(shots, a.stga_temporal_group) if a.stga_windows is not None else None
    ),
    "flops_per_sample_forward": flops,
  }


def make_plan(
  cfg: RunConfig,
  mesh_shape: dict[str, int],
  *,
  aot: bool = False,
  device_list: list | None = None,
  hbm_bytes: int | None = None,
) -> dict:
  """Everything the planner prints, as a dict (also used by the tests). device_list: the
  devices to plan on (default: this process's first ones), e.g. compile-only TPU devices.
  hbm_bytes: the chip's memory; with aot the plan then says whether the step `fits` (its
  per-chip peak within FIT_FRACTION of it)."""
  run = as_run_config(cfg)
  devices = math.prod(mesh_shape.values())
  mesh = make_mesh(mesh_shape, devices=device_list or jax.devices()[:devices])
  rules = run.sharding.rules
  latent, grid = latent_and_token_grids(run)
  tokens = math.prod(grid)
  ts = abstract_train_state(run, mesh, rules)
  params = nnx.state(nnx.merge(ts.graphdef, ts.state)[0], nnx.Param)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  param_bytes = _device_bytes(params)
  state_bytes = _device_bytes(ts.state)

  activations = activation_estimate(run, dict(mesh.shape), rules, tokens, n_params, param_bytes)
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
      **activations,
      # What the compiler's peak counts: the state (arguments; the updated state is donated
      # into them), the gradients and the activations on the device.
      "peak_estimate": state_bytes + param_bytes + activations["activations_device"],
    },
  }
  plan.update(flops_summary(run, grid))
  if aot:
    plan["aot"] = compile_train_step(run, ts, latent)
    if hbm_bytes is not None:
      plan["aot"]["hbm_bytes"] = hbm_bytes
      peak = plan["aot"].get("peak_bytes")
      plan["aot"]["fits"] = peak is not None and peak <= FIT_FRACTION * hbm_bytes
  return plan


def compile_train_step(run: RunConfig, ts, latent) -> dict:
  """Lowers and compiles the real training step (forward, backward, optimizer update) for the
  state's mesh and returns XLA's memory analysis per device: `peak_bytes` = arguments +
  outputs + temporaries - aliased (donated) bytes on the device, host-memory bytes apart; a
  compile-time out-of-memory is an answer too (`error`, with the temporaries XLA asked for)."""
  step = make_train_step(run, ts, loss=latent_loss_fn)
  batch = _abstract_batch(run, latent, ts.batch_sharding)
  mesh = ts.batch_sharding.mesh
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=jax.NamedSharding(mesh, jax.P()))
  start = time.perf_counter()
  result = {"device": mesh.devices.flat[0].device_kind}
  try:
    with jax.set_mesh(mesh):
      compiled = step.lower(ts.state, batch, key).compile()
  except jax.errors.JaxRuntimeError as err:
    message = str(err).splitlines()[0][:400]
    result.update(compile_seconds=round(time.perf_counter() - start, 1), error=message)
    # XLA:TPU lists the largest live allocations at the peak after the first line.
    result["error_detail"] = "\n".join(str(err).splitlines()[1:80])
    asked = re.search(r"required for HLO temporaries \(([\d.]+)G\)", message)
    if asked:
      result["temp_bytes_required"] = int(float(asked.group(1)) * GiB)
    return result
  a = compiled.memory_analysis()
  result.update(
    compile_seconds=round(time.perf_counter() - start, 1),
    argument_bytes=a.argument_size_in_bytes,
    output_bytes=a.output_size_in_bytes,
    alias_bytes=a.alias_size_in_bytes,
    temp_bytes=a.temp_size_in_bytes,
    peak_bytes=(
      a.argument_size_in_bytes
      + a.output_size_in_bytes
      + a.temp_size_in_bytes
      - a.alias_size_in_bytes
    ),
    host_bytes={
      "arguments": getattr(a, "host_argument_size_in_bytes", 0),
      "outputs": getattr(a, "host_output_size_in_bytes", 0),
      "temporaries": getattr(a, "host_temp_size_in_bytes", 0),
    },
    # Mosaic (Pallas TPU) kernels in the compiled step: the real kernels, not the XLA path.
    pallas_tpu_calls=compiled.as_text().count('custom_call_target="tpu_custom_call"'),
  )
  return result


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
    f"  activations (est.) {gib(mem['activations_device'])}  (saved block inputs + one "
    f"block's backward)"
    + (f", {gib(mem['activations_host']).strip()} on the host" if mem["activations_host"] else ""),
    f"  peak (est.)        {gib(mem['peak_estimate'])}",
  ]
  lines += _format_flops(plan)
  if "aot" in plan:
    lines += _format_aot(plan["aot"])
  return "\n".join(lines)


def _format_aot(a: dict) -> list[str]:
  gib = lambda n: f"{n / GiB:.2f} GiB"
  lines = [f"ahead-of-time compile of the training step for {a['device']}"]
  if "error" in a:
    lines[0] += f" FAILED after {a['compile_seconds']} s: {a['error']}"
  else:
    lines[0] += f" ({a['compile_seconds']} s), per device:"
    host = sum(a["host_bytes"].values())
    lines += [
      f"  arguments {gib(a['argument_bytes'])}, outputs {gib(a['output_bytes'])} "
      f"(aliased {gib(a['alias_bytes'])}), temporaries {gib(a['temp_bytes'])}",
      f"  peak {gib(a['peak_bytes'])} = arguments + outputs + temporaries - aliased"
      + (f"; host memory {gib(host)} apart" if host else ""),
    ]
  if "hbm_bytes" in a:
    verdict = "fits" if a["fits"] else "does NOT fit"
    budget = FIT_FRACTION * a["hbm_bytes"]
    lines.append(
      f"  {verdict}: the budget is {FIT_FRACTION:.0%} of the chip's {gib(a['hbm_bytes'])} "
      f"HBM = {gib(budget)}"
    )
  return lines


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
    raise InputError(f"--mesh must look like fsdp=8,context=8, got {text!r}") from None


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
  run = RunConfig.from_config_dict(_CONFIG.value)
  mesh = dict(run.sharding.mesh)
  if _MESH.value:
    mesh = {a: 1 for a in mesh} | parse_mesh(_MESH.value)
    run = run.replace(sharding=run.sharding.with_mesh(mesh))
  fixed = math.prod(n for n in mesh.values() if n != -1)
  devices = _DEVICES.value or fixed
  device_list, chip = None, None
  if _AOT_TPU.value:  # without --aot: the estimate for the slice's mesh, no compile
    from moga_jax.parallel.tpu_slices import HBM_BYTES, tpu_devices

    chip, devices = tpu_slice_size(_AOT_TPU.value, _CHIPS.value, run, mesh)
    device_list = tpu_devices(chip, devices)
  else:
    if _CHIPS.value:
      raise app.UsageError("--chips goes with --aot_tpu")
    # Fake CPU devices for the mesh; must happen before jax starts its backend.
    jax.config.update("jax_num_cpu_devices", devices)
    if jax.device_count() < devices:
      raise InputError(f"the mesh needs {devices} devices; this process has {jax.device_count()}")
  shape = run.validate_sharding(devices)
  plan = make_plan(
    run, shape, aot=_AOT.value, device_list=device_list, hbm_bytes=HBM_BYTES[chip] if chip else None
  )
  if chip and _AOT.value:
    plan.update(fit_summary(plan, chip), settings=fit_settings(run))
  _emit(plan, format_plan(plan))
  if chip and _AOT.value and not plan["fits"]:
    sys.exit(1)


def tpu_slice_size(
  text: str, chips: int | None, run: RunConfig, mesh: dict[str, int]
) -> tuple[str, int]:
  """(chip, chips) for --aot_tpu TEXT [--chips N]: a slice name gives its count, a bare
  generation takes --chips, else the config's own slice (config.sharding.tpu_slice) when it is
  of that generation, else the mesh's size."""
  from moga_jax.parallel.tpu_slices import parse_slice

  chip, count = parse_slice(text)
  if chips is not None:
    count = chips
  if count is None and run.sharding.tpu_slice:
    own, own_count = parse_slice(run.sharding.tpu_slice)
    count = own_count if own == chip else None
  if count is None:
    if -1 in mesh.values():
      raise app.UsageError(f"the mesh {mesh} has a -1 axis: give --chips or a slice (v5e-8)")
    count = math.prod(mesh.values())
  return chip, count


def fit_settings(cfg: RunConfig) -> dict:
  """The config fields a training step's memory depends on, JSON-plain (benchmarks/tpu_fit.py
  records them beside each compile, and a test holds the committed results to the configs)."""
  run = as_run_config(cfg)
  m, a, v = run.model_section, run.model_section.attention, run.video
  settings = {
    "video": [v.frames, v.height, v.width, v.shots],
    "model": {
      k: m.get(k)
      for k in (
        "dim",
        "ffn_dim",
        "num_layers",
        "num_heads",
        "scan_layers",
        "remat",
        "ffn_token_chunk",
        "dtype",
        "param_dtype",
      )
    },
    "attention": {
      k: a.get(k) for k in ("num_groups", "stga_windows", "frame_attention", "head_chunk")
    },
    "train": [run.train.batch_size, run.train.grad_accum_steps],
  }
  return json.loads(json.dumps(settings))


def fit_summary(plan: dict, chip: str) -> dict:
  """The fields `--json` promises for a TPU compile: chip, slice, chips, hbm_bytes and
  peak_bytes per chip, fits, compile_s (peak_bytes None when the compile ran out of memory)."""
  from moga_jax.parallel.tpu_slices import slice_name

  a = plan["aot"]
  return {
    "chip": chip,
    "slice": slice_name(chip, plan["devices"]),
    "chips": plan["devices"],
    "hbm_bytes": a["hbm_bytes"],
    "peak_bytes": a.get("peak_bytes"),
    "host_bytes": sum(a["host_bytes"].values()) if "host_bytes" in a else None,
    "fits": a["fits"],
    "compile_s": a["compile_seconds"],
  }


if __name__ == "__main__":
  app.run(main)
