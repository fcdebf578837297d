"""Flow matching's maths against closed forms: the loss, the schedule, the sampler, guidance and
caption dropout. Each test names the one-line mutation it catches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moga_jax.diffusion.flow import euler_sample, flow_matching_loss, sample_times, shift_time
from moga_jax.train.run_config import DiffusionConfig, RunConfig
from moga_jax.train.state import latent_loss_fn


def _x0(seed: int = 0, shape=(3, 2, 4, 4, 5)) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), shape)


def test_loss_is_zero_for_the_true_velocity_and_not_for_its_negative():
  """Catches a flipped target (x0 - noise): the velocity that carries x_t along the straight
  path, (x_t - x0) / t = noise - x0, must score zero."""
  x0 = _x0()
  true = lambda x_t, t: ((x_t - x0) / t.reshape(-1, 1, 1, 1, 1), jnp.float32(0))
  flipped = lambda x_t, t: (-(x_t - x0) / t.reshape(-1, 1, 1, 1, 1), jnp.float32(0))
  key = jax.random.key(1)
  mse, _ = flow_matching_loss(true, x0, key, shift=3.0)
  assert float(mse) < 1e-8
  assert float(flow_matching_loss(flipped, x0, key, shift=3.0)[0]) > 1.0


def test_shifted_schedule_matches_its_formula():
  """t' = s t / (1 + (s - 1) t): catches a shift applied the wrong way (t / s style)."""
  t = jnp.linspace(0.0, 1.0, 11)
  np.testing.assert_allclose(shift_time(t, 3.0), 3 * t / (1 + 2 * t), rtol=1e-6)
  np.testing.assert_allclose(shift_time(jnp.float32(0.5), 3.0), 0.75, rtol=1e-6)
  times = sample_times(4, 5.0)
  assert float(times[0]) == 1.0 and float(times[-1]) == 0.0
  assert np.all(np.diff(np.asarray(times)) < 0)  # from noise down to data


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_recovers_x0_from_the_exact_velocity_field(steps):
  """Catches integrating the wrong way (x - dt * v): along the straight path the exact velocity
  is constant, so Euler lands on x0 from pure noise in any number of steps."""
  x0, noise = _x0(1), _x0(2)
  predict = lambda x, t, conditional: noise - x0
  out = euler_sample(predict, noise, steps=steps, shift=3.0, guidance=1.0)
  np.testing.assert_allclose(out, x0, atol=1e-5)
  # A state-dependent field: v(x, t) = (x - x0) / t is exact everywhere on the paths to x0.
  field = lambda x, t, conditional: (x - x0) / t.reshape(-1, 1, 1, 1, 1)
  np.testing.assert_allclose(
    euler_sample(field, noise, steps=steps, shift=1.0, guidance=1.0), x0, atol=1e-5
  )


def test_guidance_is_uncond_plus_w_times_the_difference():
  """Catches swapped conditional / unconditional predictions: with stub predictors the one
  Euler step must move by dt * (v_u + w (v_c - v_u))."""
  x = _x0(3)
  v_c, v_u, w = jnp.full(x.shape, 2.0), jnp.full(x.shape, -1.0), 4.0
  predict = lambda x, t, conditional: v_c if conditional else v_u
  out = euler_sample(predict, x, steps=1, shift=1.0, guidance=w)
  np.testing.assert_allclose(out, x + (0.0 - 1.0) * (v_u + w * (v_c - v_u)), rtol=1e-6)


def test_caption_dropout_drops_at_its_rate():
  """Catches dropout that keeps at the rate instead of dropping at it (>= vs <): with rate 0.3
  about 30% of the samples get the null caption."""
  batch, rate = 4000, 0.3
  diffusion = DiffusionConfig(caption_dropout=rate, shift=1.0, balance_weight=0.1)
  seen = {}

  def dit(x_t, t, context, mask, frame_shot):
    seen["context"] = context
    return jnp.zeros_like(x_t), jnp.float32(0)

  inputs = {
    "latents": jnp.zeros((batch, 1, 1, 1, 1)),
    "context": jnp.ones((batch, 1, 2, 3)),
    "context_mask": jnp.ones((batch, 1, 2), bool),
    "frame_shot": jnp.zeros((batch, 1), jnp.int32),
    "null_context": jnp.full((batch, 2, 3), -1.0),
  }
  latent_loss_fn(dit, inputs, jax.random.key(4), diffusion)
  dropped = np.asarray(seen["context"][:, 0, 0, 0] == -1.0)
  assert abs(dropped.mean() - rate) < 0.03  # 4000 draws: ~4 standard deviations


class _StubVideoModel(nnx.Module):
  """TextToVideo's sampling interface with a velocity of +1 given any caption and -1 given the
  empty one, so that one Euler step shows which prediction guidance took as conditional."""

  def __init__(self, noise: jax.Array):
    self.noise = nnx.Variable(noise)

  def encode_text(self, captions):
    present = (captions != 0).any(-1, keepdims=True)  # [B, S, 1]
    return present.astype(jnp.float32)[..., None], present

  def velocity(self, x, t, context, mask, frame_shot):
    sign = jnp.where(context.max() > 0, 1.0, -1.0)
    return sign * jnp.ones_like(x), jnp.float32(0)

  def to_video(self, z):
    return (z - self.noise[...])[..., :3]  # the distance travelled, as pixels in [-1, 1]


def test_sample_py_guides_toward_the_prompt():
  """Catches sample.py's sampler (moga_jax.diffusion.sampling) handing the empty caption's
  prediction in as the conditional one: one
  step with guidance w moves the noise by -(v_u + w (v_c - v_u)) = -(-1 + 2 w)."""
  from moga_jax.train.config_files import load_config_module

  tiny = load_config_module("tiny")
  from moga_jax.diffusion.sampling import generate

  cfg = tiny.get_config()
  cfg.sample.steps, cfg.sample.guidance = 1, 0.75
  d, f = cfg.data, cfg.model.latent_factor
  noise = jax.random.normal(
    jax.random.key(3), (1, d.frames_per_shot, d.height // f, d.width // f, 3 * f * f)
  )
  video = generate(_StubVideoModel(noise), cfg, ["a red circle"], seed=3)
  moved = -(-1.0 + 2 * 0.75)  # -0.5; swapped: -(1 - 2 w) = +0.5
  assert np.unique(video).tolist() == [round((moved + 1) * 127.5)]


def test_wan_pipeline_guides_toward_the_prompt():
  """Catches the Wan pipeline's guidance with prompt and negative prompt swapped: a stub DiT
  whose velocity is the caption's value (+1 prompt, -1 negative) must move one step by
  -(v_n + w (v_p - v_n))."""
  from moga_jax.train.config_files import load_config_module

  wan1_3b_moga = load_config_module("wan1_3b_moga")
  from moga_jax.wan import pipeline

  cfg = wan1_3b_moga.get_config()
  cfg.sample.steps, cfg.sample.guidance, cfg.sample.solver = 1, 5.0, "euler"
  cfg.video.frames, cfg.video.height, cfg.video.width = 5, 32, 32

  class StubDiT(nnx.Module):
    def __call__(self, x, t, context, mask, frame_shot):
      return context[:, 0, 0, 0].reshape(-1, 1, 1, 1, 1) * jnp.ones_like(x), jnp.float32(0)

  run = RunConfig.from_config_dict(cfg)
  geometry = pipeline.video_geometry(run.video, shots=1)
  embeddings = np.stack([np.ones((4, 8), np.float32), -np.ones((4, 8), np.float32)])
  latents = pipeline.sample_latents(StubDiT(), run, embeddings, geometry, seed=2)
  noise = jax.random.normal(jax.random.key(2), (1, *geometry.latent, cfg.model.in_channels))
  np.testing.assert_allclose(latents - noise, -(-1.0 + 5.0 * 2.0), rtol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_recovers_x0_from_the_exact_velocity_field(order):
  """Along the straight path every data prediction x - sigma v is x0 exactly, so UniPC (any
  order, predictor and corrector) lands on x0; a state-dependent exact field too."""
  from moga_jax.diffusion.unipc import flow_sigmas, unipc_sample

  x0, noise = _x0(4), _x0(5)
  sigmas = flow_sigmas(6, 3.0)
  out = unipc_sample(lambda x, t: noise - x0, noise, sigmas, order=order)
  np.testing.assert_allclose(out, x0, atol=1e-5)
  field = lambda x, t: (x - x0) / t.reshape(-1, 1, 1, 1, 1)
  np.testing.assert_allclose(unipc_sample(field, noise, sigmas, order=order), x0, atol=1e-5)


def test_unipc_beats_euler_on_gaussian_data():
  """For data x0 ~ N(mu, s^2) the exact velocity is known in closed form and the flow carries
  noise eps to mu + s eps. At 16 evaluations UniPC (order 2) lands far closer than Euler.
  Kills a corrector or predictor with a flipped sign (error doubles; diffusers parity in
  tests/test_unipc_parity.py pins the rest)."""
  from moga_jax.diffusion.flow import sample_flow

  noise = _x0(6, (2, 3, 4, 4, 1))
  mu, s2 = jnp.tanh(_x0(7, noise.shape)), 0.25

  def predict(x, t, conditional):
    t = t.reshape(-1, 1, 1, 1, 1)
    a = 1.0 - t
    x0 = mu + a * s2 / (a * a * s2 + t * t) * (x - a * mu)  # E[x0 | x_t]
    return (x - x0) / t

  exact = mu + jnp.sqrt(s2) * noise
  error = {
    solver: float(
      jnp.abs(
        sample_flow(predict, noise, solver=solver, steps=16, shift=3.0, guidance=1.0) - exact
      ).max()
    )
    for solver in ("euler", "unipc")
  }
  assert error["unipc"] < error["euler"] / 2.2, error


def test_sample_flow_refuses_an_unknown_solver():
  from moga_jax.diffusion.flow import sample_flow

  with pytest.raises(
    ValueError,
    match=r"config.sample.solver must be one of \('euler', "
    r"'unipc'\), got 'dpm'",
  ):
    sample_flow(lambda x, t, c: x, _x0(), solver="dpm", steps=2, shift=1.0, guidance=1.0)
