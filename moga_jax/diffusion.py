"""Rectified flow / flow matching as in Wan: the training loss and the Euler sampler.

x_t = (1 - t) x_0 + t eps, the model predicts the velocity eps - x_0, and t is drawn uniformly
then shifted, t' = s t / (1 + (s - 1) t), which spends more steps at high noise for large
videos. Sampling integrates from t = 1 (noise) to 0 along the same shifted schedule, with
classifier-free guidance against an empty caption.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


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


def euler_sample(predict: Callable, noise: jax.Array, *, steps: int, shift: float,
                 guidance: float, progress: Callable[[int], None] | None = None) -> jax.Array:
  """predict(x, t, conditional: bool) -> velocity. Integrates dx/dt = v from t=1 to t=0.

  guidance: classifier-free guidance weight w, v = v_u + w (v_c - v_u) (1 disables it).
  progress(i) is called after step i (for a progress bar); the loop is a Python loop over
  jitted steps for that reason.
  """
  times = sample_times(steps, shift)
  x = noise
  for i in range(steps):
    t = jnp.full((noise.shape[0],), times[i])
    v = predict(x, t, True)
    if guidance != 1.0:
      v_uncond = predict(x, t, False)
      v = v_uncond + guidance * (v - v_uncond)
    x = x + (times[i + 1] - times[i]) * v
    if progress is not None:
      progress(i)
  return x
