"""The whole model's step time, dense attention against the paper's block: the paper's 1.7x.

  python benchmarks/model_step.py --config configs/model_step.py:gpu --json_out model_step.json
  python benchmarks/model_step.py --config configs/model_step.py:smoke   # CPU, seconds

The attention benchmarks time the op and the block alone; the paper's claim ("1.7x speedup in
both training and inference") is about the whole DiT. This builds the named config's DiT (Wan
2.1 1.3B's widths from configs/wan1_3b_moga.py; random weights) once per row and times, for
each clip of `clips` and each attention of `attentions`:
  * sample: one denoising step as moga_jax.wan.pipeline samples: the conditional and the
    unconditional branch in one batch of two, v = v_u + g (v_c - v_u), then an Euler update;
  * train: one optimizer step through the project's own `init_train_state`, `make_train_step`
    and `latent_loss_fn` (forward + backward + AdamW), one clip per step, remat per `remat`.
"dense" turns every branch off and attends with jax.nn.dot_product_attention on
`dense_implementation` (cuDNN's flash attention on a GPU); "paper" is the config's block
(M = 5 routed groups, 2x2 STGA, per-frame attention) on the backend's kernels.

Each row is compiled ahead of time (compile seconds and XLA's memory analysis recorded), run
`warmup` times, then timed `repeats` times with block_until_ready; the median is reported.
TFLOP/s are achieved model FLOPs: moga_jax.tools.flops.model_flops (one sample's forward, the
planner's count) x 2 for a sampling step (CFG's two branches) and x 3 x batch for a training
step (forward + backward); remat's recomputed forward is not counted. A row that fails (e.g.
out of memory) records its error and the run goes on; the exit status is 1 only if a row failed
for another reason than memory. `--json_out` is rewritten after every row.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from moga_jax.cli.logs import quiet_libraries
from moga_jax.model.config import DENSE
from moga_jax.model.text_to_video import dit_from_config
from moga_jax.parallel.sharding import make_mesh
from moga_jax.tools.flops import latent_and_token_grids, model_flops
from moga_jax.train.config_files import load_config_module
from moga_jax.train.run_config import RunConfig
from moga_jax.train.state import (
  abstract_train_state,
  init_train_state,
  latent_loss_fn,
  make_train_step,
)
from moga_jax.wan.pipeline import cfg_velocity
from pallas_kernels import resolve_implementation

MODES = ("sample", "train")
ATTENTIONS = ("dense", "paper")
PAPER_SPEEDUP = 1.7  # the paper's whole-model claim, training and inference alike
_OOM = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory")


def clip_config(bench, frames: int, shots: int, attention: str):
  """The named config at the benchmark's clip, sizes and dtypes, with `attention`: "dense"
  (every branch off, jax.nn.dot_product_attention on bench.dense_implementation) or "paper"
  (the config's block)."""
  if attention not in ATTENTIONS:
    raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
  cfg = load_config_module(bench.model_config).get_config()
  cfg.video.update(bench.video.to_dict())
  cfg.video.frames, cfg.video.shots = frames, shots
  cfg.model.update(bench.model.to_dict())
  cfg.model.dtype = bench.dtype
  if bench.param_dtype is not None:
    cfg.model.param_dtype = bench.param_dtype
  if bench.remat is not None:
    cfg.model.remat = bench.remat
  cfg.train.batch_size = bench.train_batch
  cfg.train.grad_accum_steps = 1  # one step is one update here
  # One device: the named config's mesh is its TPU slice's.
  cfg.sharding.mesh.update({axis: 1 for axis in cfg.sharding.mesh})
  cfg.seed = bench.seed
  a = cfg.model.attention
  if attention == "dense":
    a.update(DENSE)
    a.dense_implementation = bench.dense_implementation
  elif bench.implementation is not None:
    a.implementation = bench.implementation
  return cfg


def clip_inputs(cfg, batch: int, seed: int, *, abstract: bool = False) -> dict:
  """Random DiT inputs for `batch` clips of the config: latents, caption states (all mask
  True, as Wan hands them on) and the video's frames split into consecutive, near-equal shots
  (as moga_jax.wan.pipeline splits them). Drawn by numpy: jax.random would compile a program
  per shape, seconds each on a CPU. abstract: shapes and dtypes only."""
  latent = RunConfig.from_config_dict(cfg).latent_grid
  m, v = cfg.model, cfg.video
  rng = np.random.default_rng(seed)
  frame_shot = np.arange(latent[0]) * v.shots // latent[0]
  arrays = {
    "latents": ((batch, *latent, m.in_channels), np.float32),
    "context": ((batch, v.shots, v.caption_len, m.text_dim), np.float32),
    "context_mask": ((batch, v.shots, v.caption_len), np.bool_),
    "frame_shot": ((batch, latent[0]), np.int32),
  }
  if abstract:
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in arrays.items()}
  normal = lambda k: jnp.asarray(rng.standard_normal(arrays[k][0], np.float32))
  return {
    "latents": normal("latents"),
    "context": normal("context"),
    "context_mask": jnp.ones(arrays["context_mask"][0], bool),
    "frame_shot": jnp.asarray(np.broadcast_to(frame_shot, arrays["frame_shot"][0]), jnp.int32),
  }


def _memory(compiled) -> dict:
  stats = compiled.memory_analysis()
  if stats is None:
    return {"temp_bytes": None, "argument_bytes": None}
  return {
    "temp_bytes": int(stats.temp_size_in_bytes),
    "argument_bytes": int(stats.argument_size_in_bytes),
  }


def _run_calls(call, bench, deadline: float | None) -> tuple[list[float], int]:
  """`warmup` untimed calls, then up to `repeats` timed ones (fewer when the deadline, a
  perf_counter value, leaves time for fewer; at least one). call() runs one step and blocks
  until its outputs are ready."""
  last = None
  for _ in range(bench.warmup):
    start = time.perf_counter()
    call()
    last = time.perf_counter() - start
  repeats = bench.repeats
  if deadline is not None and last:
    repeats = max(1, min(repeats, int((deadline - time.perf_counter()) / last)))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return times, repeats


def sample_program(cfg, *, abstract: bool = False):
  """(jitted step, its arguments): one guided denoising step, both CFG branches in one batch
  of two, then an Euler update. abstract: the arguments as shapes only (nothing allocated)."""
  build = lambda: dit_from_config(cfg.model, rngs=nnx.Rngs(cfg.seed))
  graphdef, state = nnx.split(nnx.eval_shape(build))
  if not abstract:
    state = jax.jit(lambda: nnx.state(build()))()  # built on the device, not op by op
  inputs = clip_inputs(cfg, 2, cfg.seed + 1, abstract=abstract)  # [conditional, unconditional]
  guidance = float(cfg.sample.guidance)

  def step(state, x, t, dt, context, mask, frame_shot):
    dit = nnx.merge(graphdef, state)  # the Wan sampler's own guided velocity
    return x + dt * cfg_velocity(dit, x, t, context, mask, frame_shot, guidance)

  latents = inputs["latents"]
  if abstract:
    x = jax.ShapeDtypeStruct((1, *latents.shape[1:]), latents.dtype)
    t, dt = jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32)
  else:
    x, t, dt = latents[:1], jnp.full((1,), 0.9, jnp.float32), jnp.float32(-0.02)
  args = (state, x, t, dt, inputs["context"], inputs["context_mask"], inputs["frame_shot"])
  return jax.jit(step), args


def train_program(cfg, *, abstract: bool = False):
  """(jitted step, its arguments, mesh): one optimizer step of the project's training loop
  on a one-device mesh. abstract: the state and batch as shapes only (nothing allocated)."""
  run = RunConfig.from_config_dict(cfg)
  mesh = make_mesh(run.validate_sharding(1), devices=jax.devices()[:1])
  train_state = (abstract_train_state if abstract else init_train_state)(
    run, mesh, run.sharding.rules
  )
  step = make_train_step(run, train_state, loss=latent_loss_fn)
  batch = clip_inputs(cfg, cfg.train.batch_size, cfg.seed + 1, abstract=abstract)
  replicated = jax.NamedSharding(mesh, jax.P())
  if abstract:
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    batch = {k: with_sharding(x, train_state.batch_sharding) for k, x in batch.items()}
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  else:
    batch = jax.device_put(batch, train_state.batch_sharding)
    key = jax.device_put(jax.random.key(cfg.seed + 2), replicated)
  return step, (train_state.state, batch, key), mesh


def trace_step(cfg, mode: str) -> dict:
  """Traces the row's step at its real sizes without allocating or running anything: a check,
  on any host, that the model and step build at those sizes (not that they fit or compile)."""
  start = time.perf_counter()
  if mode == "sample":
    step, args = sample_program(cfg, abstract=True)
    step.trace(*args)
  else:
    step, args, mesh = train_program(cfg, abstract=True)
    with jax.set_mesh(mesh):
      step.trace(*args)
  return {"trace_s": time.perf_counter() - start}


def time_sample_step(cfg, bench, deadline) -> dict:
  """Compiles the sampling step, then warm-up and timed calls, each feeding on the last."""
  step, (state, x, *rest) = sample_program(cfg)
  start = time.perf_counter()
  compiled = step.lower(state, x, *rest).compile()
  compile_s = time.perf_counter() - start

  def call():
    nonlocal x
    x = jax.block_until_ready(compiled(state, x, *rest))

  times, repeats = _run_calls(call, bench, deadline)
  if not bool(jnp.all(jnp.isfinite(x))):
    raise FloatingPointError("the sampling step gave non-finite latents")
  return {"times_s": times, "repeats": repeats, "compile_s": compile_s, **_memory(compiled)}


def time_train_step(cfg, bench, deadline) -> dict:
  """Compiles the training step, then warm-up and timed calls, each on the last one's state."""
  step, (state, batch, key), mesh = train_program(cfg)
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    losses = []

    def call():
      nonlocal state
      state, metrics = jax.block_until_ready(compiled(state, batch, key))
      losses.append(metrics["loss"])

    times, repeats = _run_calls(call, bench, deadline)
  if not all(np.isfinite(float(v)) for v in losses):
    raise FloatingPointError(f"the training step gave a non-finite loss: {losses}")
  return {"times_s": times, "repeats": repeats, "compile_s": compile_s, **_memory(compiled)}


def _device_kind() -> str:
  return jax.devices()[0].device_kind


def _error_kind(err: BaseException) -> str:
  return "out_of_memory" if any(m in str(err) for m in _OOM) else "error"


def measure(bench, clip, mode: str, attention: str, deadline: float | None) -> dict:
  """One record: the row's sizes, FLOPs and timing, or its error."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  frames, shots = clip
  cfg = clip_config(bench, frames, shots, attention)
  grid = latent_and_token_grids(cfg)[1]
  flops = model_flops(cfg, grid)  # the dense config's "moga" count is its dense count
  forward = flops["dense"] if attention == "dense" else flops["moga"]
  counted = 2 * forward if mode == "sample" else 3 * forward * cfg.train.batch_size
  tokens = int(np.prod(grid))
  record = {
    "tokens": tokens,
    "mode": mode,
    "attention": attention,
    "median_s": None,
    "tflops_per_s": None,
    "times_s": [],
    "repeats": 0,
    "warmup": bench.warmup,
    "compile_s": None,
    "temp_bytes": None,
    "argument_bytes": None,
    "flops": counted,
    "flops_counted": (
      "model_flops forward x 2 (CFG)"
      if mode == "sample"
      else "model_flops forward x 3 (forward + backward) x batch; remat's recompute not counted"
    ),
    "frames": frames,
    "shots": shots,
    "token_grid": list(grid),
    "batch": 2 if mode == "sample" else cfg.train.batch_size,
    "remat": cfg.model.remat,
    "dtype": cfg.model.dtype,
    "param_dtype": cfg.model.param_dtype,
    "implementation": (
      bench.dense_implementation or "xla"
      if attention == "dense"
      else resolve_implementation(bench.implementation, seq=tokens)
    ),
    "device_kind": _device_kind(),
    # XLA's share of the GPU's memory (unset: its default, 75%), for reading an OOM row.
    "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "error": None,
    "error_kind": None,
  }
  if deadline is not None and time.perf_counter() >= deadline:
    record.update(error=f"not run: past budget_s = {bench.budget_s:g} s", error_kind="skipped")
    return record
  try:
    if bench.trace_only:
      timing = trace_step(cfg, mode)
    else:
      timing = (time_sample_step if mode == "sample" else time_train_step)(cfg, bench, deadline)
  except Exception as err:  # recorded (an OOM is a result); the other rows go on
    record.update(error=f"{type(err).__name__}: {str(err)[:2000]}", error_kind=_error_kind(err))
    return record
  finally:
    gc.collect()  # the row's weights and optimizer state, before the next row allocates
  record.update(timing)
  if bench.trace_only:
    return record
  record["median_s"] = statistics.median(timing["times_s"])
  record["tflops_per_s"] = counted / record["median_s"] / 1e12
  return record


def speedups(records) -> list[dict]:
  """dense median / paper median per (tokens, mode) where both rows ran, beside the FLOP
  ratio (the speed-up the paper's block would give at the dense model's efficiency)."""
  ran = {(r["tokens"], r["mode"], r["attention"]): r for r in records if r["median_s"] is not None}
  out = []
  for tokens, mode in dict.fromkeys((r["tokens"], r["mode"]) for r in records):
    dense, paper = ran.get((tokens, mode, "dense")), ran.get((tokens, mode, "paper"))
    if dense is not None and paper is not None:
      out.append(
        {
          "tokens": tokens,
          "mode": mode,
          "dense_over_paper": dense["median_s"] / paper["median_s"],
          "flops_ratio": dense["flops"] / paper["flops"],
        }
      )
  return out


def format_table(records) -> str:
  header = ("tokens", "mode", "attention", "median s", "TFLOP/s", "calls", "compile s", "temp GiB")
  lines = [header]
  for r in records:
    if r["error"] is not None:
      lines.append((f"{r['tokens']:,}", r["mode"], r["attention"], r["error_kind"], "", "", "", ""))
      continue
    lines.append(
      (
        f"{r['tokens']:,}",
        r["mode"],
        r["attention"],
        f"{r['median_s']:.4g}",
        f"{r['tflops_per_s']:.4g}",
        str(r["repeats"]),
        f"{r['compile_s']:.1f}",
        "-" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**30:.2f}",
      )
    )
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  out = [
    "| " + " | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) + " |"
    for line in lines
  ]
  out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for s in speedups(records):
    out.append(
      f"{s['tokens']:,} tokens, {s['mode']}: dense / paper = {s['dense_over_paper']:.2f}x "
      f"(the paper: {PAPER_SPEEDUP}x; FLOP ratio {s['flops_ratio']:.2f}x)"
    )
  return "\n".join(out)


def run(bench, json_out: str | Path | None = None) -> list[dict]:
  """Every (clip, mode, attention) row of the config, in that order; the records."""
  start = time.perf_counter()
  deadline = start + bench.budget_s if bench.budget_s > 0 else None
  records = []

  def write(rows):
    if json_out:
      Path(json_out).parent.mkdir(parents=True, exist_ok=True)
      Path(json_out).write_text(json.dumps(rows, indent=2))

  for clip in bench.clips:
    for mode in bench.modes:
      for attention in bench.attentions:
        # Killed mid-row (a time limit outside), the JSON still says which row was running.
        grid = latent_and_token_grids(clip_config(bench, *clip, attention))[1]
        running = dict(tokens=int(np.prod(grid)), mode=mode, attention=attention, median_s=None)
        running.update(frames=clip[0], shots=clip[1], error="did not finish")
        write([*records, {**running, "error_kind": "unfinished"}])
        record = measure(bench, tuple(clip), mode, attention, deadline)
        records.append(record)
        write(records)
        if record["error"] is not None:
          status = f"{record['error_kind']}: {record['error'][:300]}"
        elif bench.trace_only:
          status = f"traced in {record['trace_s']:.1f} s (trace_only: not compiled or run)"
        else:
          status = (
            f"{record['median_s']:.4g} s median of {record['repeats']}, "
            f"{record['tflops_per_s']:.4g} TFLOP/s, compiled in {record['compile_s']:.1f} s"
          )
        print(
          f"[{time.perf_counter() - start:7.1f} s] {record['tokens']:>8,} tokens  {mode:<6} "
          f"{attention:<5}  {status}",
          flush=True,
        )
  return records


def main(argv, bench, json_out: str | None):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  quiet_libraries()
  if bench.prng_impl:
    jax.config.update("jax_default_prng_impl", bench.prng_impl)
  print(
    f"jax {jax.__version__} on {jax.default_backend()} ({_device_kind()}); preset "
    f"{bench.preset}: {bench.model_config} clips {list(map(tuple, bench.clips))} (frames, "
    f"shots), {bench.dtype} compute, dense = {bench.dense_implementation}, remat "
    f"{bench.remat}, {bench.warmup} warm-up + {bench.repeats} timed calls, PRNG "
    f"{jax.config.jax_default_prng_impl}",
    flush=True,
  )
  records = run(bench, json_out)
  if not bench.trace_only:
    print()
    print(format_table(records))
  if json_out:
    print(f"wrote {json_out}")
  if any(r["error_kind"] == "error" for r in records):
    sys.exit(1)


if __name__ == "__main__":
  # Flags only when run as a script: importing this module (the tests do) defines none, so it
  # cannot clash with another module's --config in the same process.
  _config = config_flags.DEFINE_config_file(
    "config",
    str(Path(__file__).parents[1] / "configs" / "model_step.py") + ":gpu",
    "Benchmark config file, with a preset after the colon.",
  )
  _json_out = flags.DEFINE_string(
    "json_out", None, "Write the records, a JSON list (one per clip, mode, attention), here."
  )
  app.run(lambda argv: main(argv, _config.value, _json_out.value))
