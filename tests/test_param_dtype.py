"""config.model.param_dtype: every parameter stored in it, the maths kept in float32, and a
float32 checkpoint loading into bfloat16 parameters (sampling a big model in half the memory)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from moga_jax.model.text_to_video import TextToVideo
from moga_jax.train.checkpoint import Checkpointer
from moga_jax.train.run_config import RunConfig
from moga_jax.train.state import load_trained, make_optimizer, optimizer_layout


def _config(param_dtype: str = "float32"):
  cfg = tiny.get_config()
  cfg.model.dim, cfg.model.ffn_dim, cfg.model.num_layers = 32, 64, 2
  cfg.model.text_dim, cfg.model.text_layers = 16, 1
  cfg.model.param_dtype = param_dtype
  return cfg


def _velocity(model: TextToVideo, key):
  k1, k2, k3 = jax.random.split(key, 3)
  z = jax.random.normal(k1, (2, 4, 8, 8, 48))
  captions = jax.random.randint(k2, (2, 2, 48), 1, 256).astype(jnp.uint8)
  context, mask = model.encode_text(captions)
  t = jax.random.uniform(k3, (2,))
  shots = jnp.array([[0, 0, 1, 1]] * 2, jnp.int32)
  return model.velocity(z, t, context, mask, shots)[0]


def _as_float32(model: TextToVideo) -> TextToVideo:
  """A float32 model holding exactly the given model's (rounded) parameter values."""
  twin = TextToVideo(_config().model, rngs=nnx.Rngs(0))
  values = jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(model, nnx.Param))
  nnx.update(twin, values)
  return twin


def test_bfloat16_parameters_everywhere_and_float32_maths(key):
  model = TextToVideo(_config("bfloat16").model, rngs=nnx.Rngs(0))
  dtypes = {str(x.dtype) for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
  assert dtypes == {"bfloat16"}, dtypes  # every Linear, norm, conv, embedding and modulation
  plain = TextToVideo(_config().model, rngs=nnx.Rngs(0))
  assert {str(x.dtype) for x in jax.tree.leaves(nnx.state(plain, nnx.Param))} == {"float32"}

  out = _velocity(model, key)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  # Storage only: the same rounded values in float32 parameters give the same velocity.
  np.testing.assert_allclose(out, _velocity(_as_float32(model), key), rtol=2e-5, atol=2e-5)


def test_a_float32_checkpoint_loads_into_bfloat16_parameters(tmp_path):
  cfg = _config()
  model = TextToVideo(cfg.model, rngs=nnx.Rngs(5))
  saver = Checkpointer(tmp_path / "checkpoints")
  saver.save(
    2,
    (model, make_optimizer(model, cfg.train)),
    data_state={},
    model_config=cfg.model.to_dict(),
    optimizer_config=optimizer_layout(cfg.train),
  )
  saver.close()
  loaded = load_trained(_config("bfloat16"), tmp_path)
  saved = jax.tree.leaves(nnx.state(model, nnx.Param))
  for got, want in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)), saved, strict=True):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jnp.bfloat16)))


def test_validate_config_names_a_bad_param_dtype():
  with pytest.raises(ValueError, match=r"config\.model\.param_dtype .*'float16'"):
    RunConfig.from_config_dict(_config("float16"))
