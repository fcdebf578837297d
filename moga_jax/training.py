"""The optimizer and the jitted training step (shared by train.py, sample.py and the tests)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from moga_jax.diffusion import flow_matching_loss
from moga_jax.model import TextToVideo, frame_shots


def make_optimizer(model: TextToVideo, cfg) -> nnx.Optimizer:
  """AdamW with linear warmup, cosine decay to 5% and global-norm gradient clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1),
      end_value=0.05 * cfg.learning_rate)
  tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                   optax.adamw(schedule, weight_decay=cfg.weight_decay))
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def loss_fn(model: TextToVideo, batch: dict, key: jax.Array, cfg):
  """Flow-matching MSE + balance_weight x balancing loss, with caption dropout."""
  k_drop, k_flow = jax.random.split(key)
  captions = batch["captions"]
  keep = jax.random.uniform(k_drop, (captions.shape[0],)) >= cfg.diffusion.caption_dropout
  captions = jnp.where(keep[:, None, None], captions, 0)
  context, context_mask = model.encode_text(captions)
  x0 = model.to_latents(batch["video"])
  frame_shot = frame_shots(batch["shot_bounds"], batch["num_shots"], x0.shape[1])
  predict = lambda x_t, t: model.velocity(x_t, t, context, context_mask, frame_shot)
  mse, balance = flow_matching_loss(predict, x0, k_flow, shift=cfg.diffusion.shift)
  return mse + cfg.diffusion.balance_weight * balance, (mse, balance)


def make_train_step(cfg):
  """train_step(model, optimizer, batch, key) -> metrics; updates model and optimizer."""

  @nnx.jit
  def train_step(model, optimizer, batch, key):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, (mse, balance)), grads = grad_fn(model, batch, key, cfg)
    optimizer.update(model, grads)
    return {"loss": loss, "mse": mse, "balance_loss": balance,
            "grad_norm": optax.tree.norm(grads)}

  return train_step
