"""An exponential moving average of the weights, kept in the optimizer's state.

As the last link of the optimizer chain (`ema_of_params`), it sees each update and the
parameters it applies to, so the average is saved, restored and sharded with the optimizer's
moments and advances once per real update (under gradient accumulation, every k-th step).
Sampling reads it back: `training.load_trained` reads this average (and the model's other
state, not its raw weights nor Adam's moments) from a checkpoint (`is_ema_path`, `ema_below`)
and puts it into the model (`load_averaged`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class EmaState(NamedTuple):
  ema: optax.Params  # same tree as the parameters


def ema_of_params(decay: float) -> optax.GradientTransformation:
  """Passes updates through unchanged; keeps ema = decay * ema + (1 - decay) * new params,
  starting from the initial parameters."""
  if not 0.0 < decay < 1.0:
    raise ValueError(f"the EMA decay must be in (0, 1), got {decay!r}")

  def init(params):
    return EmaState(jax.tree.map(jnp.copy, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("ema_of_params needs the parameters: call update(updates, state, params)")
    new = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), state.ema, new)
    return updates, EmaState(ema)

  return optax.GradientTransformation(init, update)


def load_averaged(model: nnx.Module, averaged: nnx.State) -> None:
  """Sets the model's parameters to `averaged` (a tree of the parameters' shape)."""
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, nnx.to_pure_dict(averaged))
  nnx.update(model, params)


# Nodes of an optimizer state's tree that only hold other transformations' states: the
# positions of a chain, MultiSteps' (gradient accumulation's) inner state.
_STATE_CONTAINERS = ("inner_opt_state",)


def is_ema_path(path: tuple) -> bool:
  """Whether a path of an nnx.Optimizer's state ("opt_state", ...) lies inside the EMA of the
  weights: below opt_state, through chain positions and wrapped states only, a node named
  "ema". Adam's mu and nu mirror the weights too but sit under their own names."""
  if not path or path[0] != "opt_state":
    return False
  for key in path[1:]:
    if key == "ema":
      return True
    if not (isinstance(key, int) or key in _STATE_CONTAINERS):
      return False
  return False


def ema_below(optimizer_state: nnx.State) -> nnx.State | None:
  """The EMA inside an optimizer's nnx state (whole, or filtered by is_ema_path), or None."""
  for path, _ in nnx.to_flat_state(optimizer_state):
    if is_ema_path(path):
      node = optimizer_state
      for key in path[: path.index("ema") + 1]:
        node = node[key]
      return node
  return None
