"""The memory settings change what a training step keeps, never what it computes: every remat
policy, the token-chunked FFN and head-chunked attention give the model's forward and
gradients of the unchanged model (float32, CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_close

from moga_jax.model.dit import VideoDiT
from moga_jax.model.remat import checkpoint_policy, normalise_remat

DIT = dict(
  in_channels=4,
  out_channels=4,
  dim=64,
  ffn_dim=96,
  num_layers=2,
  num_heads=4,
  text_dim=16,
  attention=dict(num_groups=3, stga_windows=(2, 2), frame_attention=True, implementation="xla"),
)


def _inputs():
  rng = np.random.default_rng(0)
  latents = jnp.asarray(rng.normal(size=(2, 4, 8, 8, 4)), jnp.float32)
  t = jnp.asarray([0.3, 0.8], jnp.float32)
  context = jnp.asarray(rng.normal(size=(2, 2, 5, 16)), jnp.float32)
  mask = jnp.ones((2, 2, 5), bool)
  frame_shot = jnp.asarray([[0, 0, 1, 1], [0, 1, 1, 1]], jnp.int32)
  return latents, t, context, mask, frame_shot


def _value_and_grads(model):
  latents, t, context, mask, frame_shot = _inputs()
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=latents.shape), jnp.float32)

  @nnx.jit
  def run(model):
    def loss(model):
      velocity, balance = model(latents, t, context, mask, frame_shot)
      return jnp.sum(velocity * cotangent) + balance

    return nnx.value_and_grad(loss)(model)

  return run(model)


@pytest.fixture(scope="module")
def reference():
  model = VideoDiT(**DIT, rngs=nnx.Rngs(0))
  # The head is zero at init (its output would not depend on anything): give it values.
  model.head.kernel[...] = 0.1 * jax.random.normal(jax.random.key(2), model.head.kernel.shape)
  return nnx.state(model), _value_and_grads(model)


@pytest.mark.parametrize(
  "settings",
  [
    {"remat": "offload_block_input", "scan_layers": True},
    {"remat": "save_attention", "scan_layers": True},
    {"remat": "save_qkv", "ffn_token_chunk": 24},  # 64 tokens: chunks of 22, 21, 21
    {"remat": True, "attention": {**DIT["attention"], "head_chunk": 1}},
    {"attention": {**DIT["attention"], "head_chunk": 2, "per_head_router": True}},
  ],
  ids=str,
)
def test_memory_settings_change_nothing_computed(reference, settings):
  state, (want_value, want_grads) = reference
  per_head = settings.get("attention", {}).get("per_head_router", False)
  model = VideoDiT(**{**DIT, **settings}, rngs=nnx.Rngs(0))
  if per_head:  # a different router shape: compare with its own unchunked twin
    twin = VideoDiT(
      **{**DIT, "attention": {**settings["attention"], "head_chunk": None}}, rngs=nnx.Rngs(0)
    )
    twin.head.kernel[...] = 0.1 * jax.random.normal(jax.random.key(2), twin.head.kernel.shape)
    nnx.update(model, nnx.state(twin))
    want_value, want_grads = _value_and_grads(twin)
  elif settings.get("scan_layers"):  # stacked blocks: copy the per-block weights in
    unstacked = VideoDiT(**DIT, rngs=nnx.Rngs(0))
    nnx.update(unstacked, state)
    blocks = nnx.state(unstacked.blocks)
    stacked = jax.tree.map(
      lambda *xs: jnp.stack(xs), *(blocks[i] for i in range(len(unstacked.blocks)))
    )
    rest = nnx.state(unstacked)
    nnx.update(model, {k: v for k, v in rest.items() if k != "blocks"})
    nnx.update(model.blocks, stacked)
  else:
    nnx.update(model, state)
  value, grads = _value_and_grads(model)
  assert_close(value, want_value, what="loss")
  grads, want_grads = nnx.state(grads), nnx.state(want_grads)
  pairs = [(grads, want_grads)]
  if settings.get("scan_layers"):  # block i of the stacked gradients vs block i's own
    pairs = [
      (
        nnx.State({k: v for k, v in grads.items() if k != "blocks"}),
        nnx.State({k: v for k, v in want_grads.items() if k != "blocks"}),
      ),
      *(
        (jax.tree.map(lambda x, i=i: x[i], grads["blocks"]), want_grads["blocks"][i])
        for i in range(2)
      ),
    ]
  for got, want in pairs:
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
      assert_close(g, w, what="gradient")


def test_remat_settings_are_named_and_checked():
  assert normalise_remat(True) == "full" and normalise_remat(False) == "none"
  assert checkpoint_policy("none") is None
  # No host memory space on CPU: the offload policy keeps its inputs like "full".
  assert checkpoint_policy("offload_block_input") is jax.checkpoint_policies.nothing_saveable
  with pytest.raises(ValueError, match=r"remat must be a bool or one of \('none', 'full'"):
    normalise_remat("sometimes")
  with pytest.raises(ValueError, match="ffn_token_chunk"):
    VideoDiT(**DIT, ffn_token_chunk=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="head_chunk"):
    VideoDiT(**{**DIT, "attention": {**DIT["attention"], "head_chunk": 0}}, rngs=nnx.Rngs(0))


def test_adam_first_moment_in_bfloat16_is_an_option():
  from moga_jax.train.config_files import load_config_module
  from moga_jax.train.run_config import TrainConfig
  from moga_jax.train.state import make_optimizer

  train = TrainConfig.of(load_config_module("tiny").get_config().train).replace(
    learning_rate=1e-3,
    warmup_steps=0,
    steps=10,
    schedule="constant",
    grad_clip=1.0,
    weight_decay=0.0,
    adam_mu_dtype="bfloat16",
  )
  model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  leaves = jax.tree_util.tree_flatten_with_path(nnx.state(make_optimizer(model, train)))[0]
  named = lambda name: [x for p, x in leaves if f"'{name}'" in jax.tree_util.keystr(p)]
  mu, nu = named("mu"), named("nu")
  assert mu and nu, [jax.tree_util.keystr(p) for p, _ in leaves]
  assert {x.dtype for x in mu} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in nu} == {jnp.dtype(jnp.float32)}
