"""UniPC against diffusers' UniPCMultistepScheduler as Wan configures it (flow prediction, flow
sigmas, shift): the same schedule, and the same samples from the same model outputs."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
schedulers = pytest.importorskip("diffusers.schedulers")

from moga_jax.diffusion.unipc import flow_sigmas, unipc_sample  # noqa: E402

pytestmark = pytest.mark.parity


def _scheduler(steps: int, shift: float, order: int):
  scheduler = schedulers.UniPCMultistepScheduler(
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=shift,
    num_train_timesteps=1000,
    solver_order=order,
  )
  scheduler.set_timesteps(steps)
  return scheduler


@pytest.mark.parametrize(
  ("steps", "shift", "order"), [(10, 3.0, 2), (7, 5.0, 2), (6, 1.0, 1), (12, 3.0, 3), (2, 3.0, 2)]
)
def test_unipc_matches_diffusers(steps, shift, order):
  scheduler = _scheduler(steps, shift, order)
  sigmas = flow_sigmas(steps, shift)
  np.testing.assert_allclose(sigmas, scheduler.sigmas.numpy(), rtol=1e-6, atol=1e-7)
  rng = np.random.default_rng(steps)
  noise, x0 = (rng.standard_normal((2, 3, 4)).astype(np.float32) for _ in range(2))

  def velocity(x, sigma):  # a smooth model stand-in whose paths curve
    return noise - x0 + 0.3 * np.sin(3.0 * x) * sigma

  x = torch.from_numpy(noise.copy())
  for i, t in enumerate(scheduler.timesteps):
    v = velocity(x.numpy(), float(scheduler.sigmas[i])).astype(np.float32)
    x = scheduler.step(torch.from_numpy(v), t, x).prev_sample
  ours = unipc_sample(
    lambda x, t: velocity(x, t[:, None, None]), jnp.asarray(noise), sigmas, order=order
  )
  assert np.abs(np.asarray(ours) - x.numpy()).max() < 5e-6 * np.abs(x.numpy()).max()
