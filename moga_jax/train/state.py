"""The optimizer, the sharded training state and the jitted training step.

The step is a pure function of (state, batch, key) jitted with the NamedShardings of the state
and of the batch, so the same code runs on one CPU, a GPU, a TPU pod slice or a fake mesh for
ahead-of-time compilation (`moga_jax.tools.plan`). The state is built directly into its shardings:
no host ever holds the whole unsharded model.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding

from moga_jax.diffusion.flow import flow_matching_loss
from moga_jax.errors import MissingInputError
from moga_jax.model.dit import VideoDiT
from moga_jax.model.text_to_video import TextToVideo, frame_shots
from moga_jax.parallel.sharding import ShardingRules, batch_spec, state_shardings
from moga_jax.train.checkpoint import Checkpointer
from moga_jax.train.ema import ema_below, ema_of_params, is_ema_path, load_averaged
from moga_jax.train.run_config import (
  SCHEDULES,
  DiffusionConfig,
  RunConfig,
  TrainConfig,
  as_run_config,
  as_section,
)


def make_schedule(train: TrainConfig) -> optax.Schedule:
  """The learning rate by step for a run's train section, by its `schedule`:
  "constant": linear warm-up from 0 to learning_rate over warmup_steps, then constant (the
    paper's recipe): lr(s) = learning_rate * min(s / warmup_steps, 1), learning_rate from step 0
    when warmup_steps is 0;
  "cosine": the same warm-up, then cosine decay to 5% of learning_rate at `steps`."""
  kind, lr, warmup = train.schedule, train.learning_rate, train.warmup_steps
  if kind == "constant":
    if warmup <= 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, max(train.steps, warmup + 1), end_value=0.05 * lr
    )
  raise ValueError(f"config.train.schedule must be one of {SCHEDULES}, got {kind!r}")


def make_optimizer(model: nnx.Module, train: TrainConfig) -> nnx.Optimizer:
  """AdamW with the config's learning-rate schedule (`make_schedule`: linear warm-up, then
  constant or cosine decay to 5%) and global-norm gradient clipping.

  Optional (train section; off by default, both saved and restored with the optimizer):
  `ema_decay` > 0 keeps an EMA of the weights (moga_jax.train.ema); `grad_accum_steps` = k > 1 sums
  k steps' gradients into one update (optax.MultiSteps: the schedule, the clipping and the EMA
  then count updates, not steps). `train` may still be a ConfigDict train section."""
  train = as_section(train, TrainConfig)
  schedule = make_schedule(train)
  # adam_mu_dtype "bfloat16" stores Adam's first moment in bfloat16 (memory; off by default:
  # not measured against float32 on a loss curve); the second moment stays float32.
  tx = optax.chain(
    optax.clip_by_global_norm(train.grad_clip),
    optax.adamw(schedule, weight_decay=train.weight_decay, mu_dtype=train.adam_mu_dtype),
  )
  if train.ema_decay:
    tx = optax.chain(tx, ema_of_params(train.ema_decay))
  if train.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=train.grad_accum_steps)
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def optimizer_layout(train: TrainConfig) -> dict:
  """The train-section settings that shape the optimizer's state, saved with checkpoints so
  that resuming with others fails by name instead of inside orbax. `train` may still be a
  ConfigDict train section (cli/train.py)."""
  train = as_section(train, TrainConfig)
  return {
    "ema_decay": float(train.ema_decay),
    "grad_accum_steps": int(train.grad_accum_steps),
    "adam_mu_dtype": train.adam_mu_dtype or "float32",
  }


def load_trained(cfg: RunConfig, workdir, *, use_ema: bool = True):
  """The model of the newest checkpoint in WORKDIR/checkpoints: a TextToVideo, or for
  config.pipeline "wan" the fine-tuned VideoDiT, routers included; with use_ema the EMA
  of its weights when the run kept one. Raises MissingInputError without a checkpoint.

  The model is built as shapes only and filled from the checkpoint, which reads one copy of
  the weights: the EMA when used (the raw weights then stay on disk), else the weights; never
  the optimizer's moments (twice the weights' size under Adam). Arrays land on the first local
  device. cfg: a RunConfig (or a ConfigDict, typed here)."""
  run = as_run_config(cfg)
  workdir = Path(workdir)
  checkpoints = Checkpointer(workdir / "checkpoints", keep=run.train.keep_checkpoints)
  try:
    if checkpoints.latest_step() is None:
      raise MissingInputError(
        f"no checkpoint in {workdir / 'checkpoints'}: train first, e.g. "
        f"`python train.py --config configs/tiny.py --workdir {workdir}`"
      )
    model, optimizer = nnx.eval_shape(lambda: build_model_and_optimizer(run))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    on_device = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree
    )
    ema = nnx.filter_state(nnx.state(optimizer), lambda path, _: use_ema and is_ema_path(path))
    averaged = bool(jax.tree.leaves(ema))
    weights = nnx.filter_state(nnx.state(model), nnx.Not(nnx.Param) if averaged else ...)
    parts = {0: weights, 1: ema}
    wanted = nnx.State({k: on_device(v) for k, v in parts.items() if jax.tree.leaves(v)})
    restored, _ = checkpoints.restore_state(
      wanted,
      model_config=run.model_dict(),
      optimizer_config=optimizer_layout(run.train),
      partial=True,
    )
  finally:
    checkpoints.close()
  if 0 in restored:
    nnx.update(model, restored[0])
  if averaged:
    load_averaged(model, ema_below(restored[1]))
    logging.warning(
      "using the EMA of the weights (config.train.ema_decay = %s)", run.train.ema_decay
    )
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
  unread = [jax.tree_util.keystr(p) for p, x in leaves if isinstance(x, jax.ShapeDtypeStruct)]
  if unread:
    raise RuntimeError(f"the checkpoint in {workdir} left model state unread: {unread[:5]}")
  return model


def loss_fn(model: TextToVideo, batch: dict, key: jax.Array, diffusion: DiffusionConfig):
  """Flow-matching MSE + balance_weight x balancing loss, with caption dropout. diffusion: the
  run's DiffusionConfig (or, from older callers, a whole ConfigDict)."""
  diffusion = as_section(diffusion, DiffusionConfig)
  k_drop, k_flow = jax.random.split(key)
  captions = batch["captions"]
  keep = jax.random.uniform(k_drop, (captions.shape[0],)) >= diffusion.caption_dropout
  captions = jnp.where(keep[:, None, None], captions, 0)
  context, context_mask = model.encode_text(captions)
  x0 = model.to_latents(batch["video"])
  frame_shot = frame_shots(batch["shot_bounds"], batch["num_shots"], x0.shape[1])
  predict = lambda x_t, t: model.velocity(x_t, t, context, context_mask, frame_shot)
  mse, balance = flow_matching_loss(predict, x0, k_flow, shift=diffusion.shift)
  return mse + diffusion.balance_weight * balance, (mse, balance)


def latent_loss_fn(dit: VideoDiT, batch: dict, key: jax.Array, diffusion: DiffusionConfig):
  """The same loss for a bare VideoDiT on precomputed inputs, as Wan-scale training runs:
  latents [B, F, H, W, C] (VAE means, normalised), context [B, S, L, text_dim] (text-encoder
  states), context_mask bool [B, S, L], frame_shot int32 [B, F], and optionally null_context
  [B, L, text_dim] (the empty caption's states). Caption dropout replaces every shot's caption
  of the dropped samples with null_context (zeros without it)."""
  diffusion = as_section(diffusion, DiffusionConfig)
  k_drop, k_flow = jax.random.split(key)
  context = batch["context"]
  null = batch["null_context"][:, None] if "null_context" in batch else jnp.zeros((), jnp.float32)
  keep = jax.random.uniform(k_drop, (context.shape[0],)) >= diffusion.caption_dropout
  context = jnp.where(keep[:, None, None, None], context, null.astype(context.dtype))
  predict = lambda x_t, t: dit(x_t, t, context, batch["context_mask"], batch["frame_shot"])
  mse, balance = flow_matching_loss(predict, batch["latents"], k_flow, shift=diffusion.shift)
  return mse + diffusion.balance_weight * balance, (mse, balance)


class TrainState(NamedTuple):
  """What training carries: the (model, optimizer) graph, its state and their shardings."""

  graphdef: nnx.GraphDef
  state: nnx.State
  shardings: nnx.State  # same tree as state, NamedSharding leaves
  batch_sharding: NamedSharding

  def merge(self) -> tuple[nnx.Module, nnx.Optimizer]:
    return nnx.merge(self.graphdef, self.state)


def build_model(run: RunConfig, *, rules: ShardingRules | None = None) -> nnx.Module:
  """The model of the run's pipeline (moga_jax.train.pipeline): the tiny TextToVideo, or a Wan
  VideoDiT (fine-tuned from converted weights)."""
  from moga_jax.train.pipeline import pipeline_for  # it imports this module

  return pipeline_for(run).build_model(run, rules=rules)


def build_model_and_optimizer(run: RunConfig, *, rules: ShardingRules | None = None):
  model = build_model(run, rules=rules)
  return model, make_optimizer(model, run.train)


def abstract_train_state(
  cfg: RunConfig, mesh: jax.sharding.Mesh, rules: ShardingRules
) -> TrainState:
  """The train state's structure with ShapeDtypeStruct leaves sharded as on `mesh`: nothing
  is allocated (the planner compiles against it). cfg: a RunConfig (or a ConfigDict)."""
  run = as_run_config(cfg)
  build = lambda: build_model_and_optimizer(run, rules=rules)
  graphdef, abstract = nnx.split(nnx.eval_shape(build))
  shardings = state_shardings(abstract, mesh, rules)
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
  )
  return TrainState(graphdef, abstract, shardings, NamedSharding(mesh, batch_spec(rules)))


def init_train_state(cfg: RunConfig, mesh: jax.sharding.Mesh, rules: ShardingRules) -> TrainState:
  """Builds model and optimizer under jit straight into their shardings on `mesh`. cfg: a
  RunConfig (or a ConfigDict)."""
  run = as_run_config(cfg)
  graphdef, _, shardings, batch_sharding = abstract_train_state(run, mesh, rules)
  with jax.set_mesh(mesh):
    state = jax.jit(
      lambda: nnx.state(build_model_and_optimizer(run, rules=rules)), out_shardings=shardings
    )()
  return TrainState(graphdef, state, shardings, batch_sharding)


def make_train_step(cfg: RunConfig, train_state: TrainState, loss=loss_fn):
  """step(state, batch, key) -> (state, metrics), jitted with the state's and batch's
  shardings; the input state is donated. Call it under `jax.set_mesh(mesh)`. cfg: a RunConfig
  (or a ConfigDict); `loss(model, batch, key, diffusion)` gets its DiffusionConfig.

  With config.train.skip_nonfinite_steps > 0 a step whose loss or gradient norm is not finite
  returns the state it was given (the optimizer's step count included) and metrics["skipped"]
  = 1; the caller decides how many such steps to tolerate (`run_guard.check_finite`)."""
  run = as_run_config(cfg)
  graphdef, diffusion = train_state.graphdef, run.diffusion
  skip_bad = run.train.skip_nonfinite_steps > 0

  def step(state, batch, key):
    # merge shares the state's variables, which update mutates: keep the old leaves first
    old = jax.tree.leaves(state) if skip_bad else None
    model, optimizer = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss, has_aux=True)
    (value, (mse, balance)), grads = grad_fn(model, batch, key, diffusion)
    optimizer.update(model, grads)
    metrics = {
      "loss": value,
      "mse": mse,
      "balance_loss": balance,
      "grad_norm": optax.tree.norm(grads),
    }
    new_state = nnx.state((model, optimizer))
    if skip_bad:
      finite = jnp.isfinite(value) & jnp.isfinite(metrics["grad_norm"])
      leaves, tree = jax.tree.flatten(new_state)
      new_state = jax.tree.unflatten(
        tree, [jnp.where(finite, n, o) for n, o in zip(leaves, old, strict=True)]
      )
      metrics["skipped"] = 1 - finite.astype(jnp.int32)
    return new_state, metrics

  replicated = NamedSharding(train_state.batch_sharding.mesh, jax.P())
  return jax.jit(
    step,
    donate_argnums=0,
    in_shardings=(train_state.shardings, train_state.batch_sharding, replicated),
    out_shardings=(train_state.shardings, replicated),
  )
