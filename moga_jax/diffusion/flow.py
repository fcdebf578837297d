"""Rectified flow / flow matching as in Wan: the training loss and the samplers.

x_t = (1 - t) x_0 + t eps, the model predicts the velocity eps - x_0, and t is drawn uniformly
then shifted, t' = s t / (1 + (s - 1) t), which spends more steps at high noise for large
videos. Sampling integrates from t = 1 (noise) to 0 along the same shifted schedule, with
classifier-free guidance against an empty (or negative) caption: `sample_flow` with
config.sample.solver "euler" (first order) or "unipc" (Wan's multistep solver,
moga_jax.diffusion.unipc).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from moga_jax.diffusion.unipc import flow_sigmas, unipc_sample


def shift_time(t: jax.Array, shift: float) -> jax.Array:
  return shift * t / (1.0 + (shift - 1.0) * t)


def noisy_sample(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  t = t.reshape(-1, *([1] * (x0.ndim - 1)))
  return (1.0 - t) * x0 + t * noise


def flow_matching_loss(predict: Callable, x0: jax.Array, key: jax.Array, *, shift: float):
  """predict(x_t, t) -> (velocity, balance_loss). Returns (mse, balance_loss)."""
  k_t, k_noise = jax.random.split(key)
  t = shift_time(jax.random.uniform(k_t, (x0.shape[0],)), shift)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  velocity, balance = predict(noisy_sample(x0, noise, t), t)
  return jnp.mean((velocity.astype(jnp.float32) - (noise - x0)) ** 2), balance


def sample_times(steps: int, shift: float) -> jax.Array:
  """steps + 1 times from 1 down to 0 on the shifted schedule."""
  return shift_time(jnp.linspace(1.0, 0.0, steps + 1), shift)


SOLVERS = ("euler", "unipc")  # config.sample.solver


def guided(predict: Callable, guidance: float) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """velocity(x, t) from predict(x, t, conditional: bool) with classifier-free guidance weight
  w: v = v_u + w (v_c - v_u); w = 1 evaluates the conditional prediction only."""

  def velocity(x, t):
    v = predict(x, t, True)
    if guidance == 1.0:
      return v
    v_uncond = predict(x, t, False)
    return v_uncond + guidance * (v - v_uncond)

  return velocity


def euler_sample(
  predict: Callable,
  noise: jax.Array,
  *,
  steps: int,
  shift: float,
  guidance: float,
  progress: Callable[[int], None] | None = None,
) -> jax.Array:
  """predict(x, t, conditional: bool) -> velocity. Integrates dx/dt = v from t=1 to t=0.

  guidance: classifier-free guidance weight (see `guided`). progress(i) is called after step i
  (for a progress bar); the loop is a Python loop over jitted steps for that reason.
  """
  times = sample_times(steps, shift)
  velocity = guided(predict, guidance)
  x = noise
  for i in range(steps):
    x = x + (times[i + 1] - times[i]) * velocity(x, jnp.full((noise.shape[0],), times[i]))
    if progress is not None:
      progress(i)
  return x


def sample_flow(
  predict: Callable,
  noise: jax.Array,
  *,
  solver: str,
  steps: int,
  shift: float,
  guidance: float,
  progress: Callable[[int], None] | None = None,
) -> jax.Array:
  """Noise -> data with the named solver: "euler" on `sample_times`, or "unipc" (order 2) on
  Wan's schedule (`unipc.flow_sigmas`); one guided evaluation per step either way."""
  if solver == "euler":
    return euler_sample(
      predict, noise, steps=steps, shift=shift, guidance=guidance, progress=progress
    )
  if solver == "unipc":
    return unipc_sample(
      guided(predict, guidance), noise, flow_sigmas(steps, shift), progress=progress
    )
  raise ValueError(f"config.sample.solver must be one of {SOLVERS}, got {solver!r}")
