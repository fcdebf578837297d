"""UniPC (Zhao et al., 2023), the multistep predictor-corrector Wan samples with, for flow matching.

On the path x_s = alpha_s x_0 + sigma_s eps with alpha = 1 - sigma, the model's velocity v gives
the data prediction m = x - sigma v, and with lambda = log(alpha / sigma) the exact solution
from s to t is x_t = (sigma_t / sigma_s) x_s + alpha_t * integral of e^{-lambda} m d lambda.
UniPC approximates m in that integral by a polynomial through the last `order` data predictions
(the predictor, UniP), then, once the model has been evaluated at the new point, refits it
through that evaluation too (the corrector, UniC), which costs no extra evaluation: the
corrected point is where the next step starts. This is the B(h) = e^h - 1 variant ("bh2") in
data-prediction form, with the order lowered at the start (too few past points) and on the last
step, as Wan's sampler (diffusers' UniPCMultistepScheduler with flow sigmas) runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# The schedule's first sigma sits this far below 1: at sigma = 1 the log-SNR is -infinity.
_SIGMA_MAX_OFFSET = 1e-6


def flow_sigmas(steps: int, shift: float, train_timesteps: int = 1000) -> np.ndarray:
  """Wan's sampling schedule, steps + 1 sigmas from ~1 down to 0: `steps` evenly spaced values
  in [1 / train_timesteps, 1], shifted as in training (s t / (1 + (s - 1) t)), then 0."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  sigmas = np.linspace(1.0, 1.0 / train_timesteps, steps + 1)[:-1]
  sigmas = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
  sigmas[0] = min(sigmas[0], 1.0 - _SIGMA_MAX_OFFSET)
  return np.append(sigmas, 0.0)


def _coefficients(
  lambdas: list[float], lambda_t: float, order: int
) -> tuple[float, float, list[float], np.ndarray, np.ndarray]:
  """For a step from lambdas[-1] to lambda_t through the last `order` points: (h_phi_1, B_h,
  r_k of the older points, R, b) of UniPC's linear system R rho = b."""
  h = lambda_t - lambdas[-1]
  rks = [(lambdas[-1 - k] - lambdas[-1]) / h for k in range(1, order)] + [1.0]
  hh = -h  # data-prediction form
  h_phi_1 = math.expm1(hh) if math.isfinite(hh) else -1.0
  b_h = h_phi_1  # bh2: B(h) = e^{-h} - 1
  h_phi_k = h_phi_1 / hh - 1.0 if math.isfinite(hh) else -1.0
  factorial, rows, b = 1, [], []
  for j in range(1, order + 1):
    rows.append(np.power(rks, j - 1))
    b.append(h_phi_k * factorial / b_h)
    factorial *= j + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  return h_phi_1, b_h, rks[:-1], np.array(rows), np.array(b)


def _step(
  x: jax.Array,
  history: list[tuple[float, jax.Array]],
  *,
  sigma_s: float,
  sigma_t: float,
  order: int,
  m_t: jax.Array | None = None,
) -> jax.Array:
  """From x at sigma_s (history[-1] is its (lambda, data prediction); older points before) to
  sigma_t: the predictor, or with m_t (the data prediction at the predicted point) the
  corrector."""
  alpha_t = 1.0 - sigma_t
  with np.errstate(divide="ignore"):
    lambda_t = math.log(alpha_t) - (math.log(sigma_t) if sigma_t > 0 else -math.inf)
  lambdas = [lam for lam, _ in history]
  h_phi_1, b_h, rks, r, b = _coefficients(lambdas, lambda_t, order)
  m0 = history[-1][1]
  diffs = [(history[-1 - k][1] - m0) / rk for k, rk in enumerate(rks, start=1)]
  x_t = (sigma_t / sigma_s) * x - (alpha_t * h_phi_1) * m0
  if m_t is None:  # UniP: rho from the older points only (order 2: exactly 1/2)
    if not diffs:
      return x_t
    rhos = [0.5] if order == 2 else np.linalg.solve(r[:-1, :-1], b[:-1])
    return x_t - (alpha_t * b_h) * sum(float(rho) * d for rho, d in zip(rhos, diffs, strict=True))
  rhos = [0.5] if order == 1 else np.linalg.solve(r, b)  # UniC: the new point as well
  correction = sum(
    (float(rho) * d for rho, d in zip(rhos[:-1], diffs, strict=True)), start=jnp.zeros_like(x)
  )
  return x_t - (alpha_t * b_h) * (correction + float(rhos[-1]) * (m_t - m0))


def unipc_sample(
  velocity: Callable[[jax.Array, jax.Array], jax.Array],
  noise: jax.Array,
  sigmas: np.ndarray,
  *,
  order: int = 2,
  progress: Callable[[int], None] | None = None,
) -> jax.Array:
  """Integrates from `noise` at sigmas[0] to sigmas[-1] = 0 with UniPC of the given order.

  velocity(x, t) -> v (guidance already applied), t a [batch] array of sigmas; one evaluation
  per step. progress(i) is called after step i.
  """
  sigmas = [float(s) for s in np.asarray(sigmas, np.float64)]
  if order < 1:
    raise ValueError(f"order must be >= 1, got {order}")
  if len(sigmas) < 2 or sigmas[-1] != 0.0 or not 0.0 < sigmas[0] < 1.0:
    raise ValueError(
      "sigmas must run from below 1 down to a final 0 (see flow_sigmas), got "
      f"{sigmas[:3]}...{sigmas[-2:]}"
    )
  steps = len(sigmas) - 1
  x, history = noise, []
  previous: tuple[jax.Array, int] | None = None  # (x before the last predictor, its order)
  for i in range(steps):
    s = sigmas[i]
    m = x - s * velocity(x, jnp.full((x.shape[0],), s, x.dtype))
    if previous is not None:  # correct the point the model was just evaluated at
      x = _step(previous[0], history, sigma_s=sigmas[i - 1], sigma_t=s, order=previous[1], m_t=m)
    history = [*history, (math.log(1.0 - s) - math.log(s), m)][-order:]
    this_order = min(order, steps - i, len(history))
    previous = (x, this_order)
    x = _step(x, history, sigma_s=s, sigma_t=sigmas[i + 1], order=this_order)
    if progress is not None:
      progress(i)
  return x
