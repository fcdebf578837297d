"""load_trained reads a checkpoint's weights (and their EMA) and leaves the optimizer's moments
on disk: sampling a big model must not need twice its size in memory for Adam's mu and nu."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from moga_jax.model.text_to_video import TextToVideo
from moga_jax.train import checkpoint as checkpoint_lib
from moga_jax.train.ema import ema_below, is_ema_path
from moga_jax.train.state import load_trained, make_optimizer, optimizer_layout


def _config(ema_decay: float, accum: int):
  cfg = tiny.get_config()
  cfg.model.dim, cfg.model.ffn_dim, cfg.model.num_layers = 32, 64, 1
  cfg.model.text_dim, cfg.model.text_layers = 16, 1
  cfg.train.ema_decay, cfg.train.grad_accum_steps = ema_decay, accum
  return cfg


def _params(model) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _save_run(cfg, workdir):
  """A checkpoint whose weights, EMA and moments all differ, so the test can tell them apart."""
  model = TextToVideo(cfg.model, rngs=nnx.Rngs(3))
  optimizer = make_optimizer(model, cfg.train)

  def shift(path, x):  # moments + 7, the EMA + 7 - 9: the EMA ends at weights - 2
    if x.dtype != jnp.float32:
      return x
    keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path)
    return x + 7.0 - (9.0 if is_ema_path(keys) else 0.0)

  nnx.update(optimizer, jax.tree_util.tree_map_with_path(shift, nnx.state(optimizer)))
  saver = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  saver.save(
    4,
    (model, optimizer),
    data_state={},
    model_config=cfg.model.to_dict(),
    optimizer_config=optimizer_layout(cfg.train),
  )
  saver.close()
  return model


@pytest.mark.parametrize(("ema_decay", "accum"), [(0.0, 1), (0.9, 1), (0.9, 2)])
@pytest.mark.parametrize("use_ema", [True, False])
def test_load_trained_reads_weights_and_ema_only(tmp_path, monkeypatch, ema_decay, accum, use_ema):
  cfg = _config(ema_decay, accum)
  saved = _params(_save_run(cfg, tmp_path))
  asked = []
  restore = checkpoint_lib.Checkpointer.restore_state

  def spy(self, state, **kwargs):
    asked.append([p for p, _ in nnx.to_flat_state(state)])
    return restore(self, state, **kwargs)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "restore_state", spy)
  loaded = _params(load_trained(cfg, tmp_path, use_ema=use_ema))

  (paths,) = asked
  optimizer_paths = [p[1:] for p in paths if p[0] == 1]
  assert all(is_ema_path(p) for p in optimizer_paths)  # no moments, counts or accumulators
  averaged = use_ema and ema_decay > 0
  assert bool(optimizer_paths) == averaged
  for got, want in zip(loaded, saved, strict=True):
    np.testing.assert_allclose(got, want - 2.0 if averaged else want, rtol=1e-6)


def test_is_ema_path_tells_the_average_from_the_moments():
  cfg = _config(0.9, 2)
  model = TextToVideo(cfg.model, rngs=nnx.Rngs(0))
  state = nnx.state(nnx.eval_shape(lambda: make_optimizer(model, cfg.train)))
  paths = [p for p, _ in nnx.to_flat_state(state)]
  ema = [p for p in paths if is_ema_path(p)]
  assert len(ema) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert any("mu" in p for p in paths) and not any("mu" in p or "nu" in p for p in ema)
  nothing = nnx.filter_state(state, lambda p, _: False)
  assert ema_below(state) is not None and ema_below(nothing) is None
