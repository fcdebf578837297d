"""Run by tests/test_sharding.py in a fresh process with 8 fake CPU devices.

  python sharded_model.py data=2,context=4 [per_head|shared]

The tiny text-to-video model (the paper's MoGA + STGA + per-frame blocks, per-shot
cross-attention) on the given mesh must equal the same model unsharded: forward, gradients,
and one training step (loss, metrics and every updated parameter and optimizer moment).
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
# Fake CPU devices on any machine: on a GPU or TPU host jax would otherwise pick the one real chip.
os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moga_jax.model.text_to_video import TextToVideo
from moga_jax.parallel.sharding import ShardingRules, make_mesh, state_shardings
from moga_jax.train.config_files import load_config_module
from moga_jax.train.run_config import RunConfig
from moga_jax.train.state import init_train_state, loss_fn, make_train_step

assert jax.device_count() == 8, jax.devices()
mesh_arg, routing = sys.argv[1], sys.argv[2]
mesh_shape = {k: int(v) for k, v in (kv.split("=") for kv in mesh_arg.split(","))}

cfg = load_config_module("tiny").get_config()
cfg.model.dim, cfg.model.ffn_dim, cfg.model.num_layers = 64, 96, 2
cfg.model.num_heads, cfg.model.text_dim = 8, 32
cfg.model.attention.per_head_router = routing == "per_head"
cfg.train.batch_size = 4
cfg.sharding.mesh = {"data": 1, "fsdp": 1, "context": 1, "share": 1, "tensor": 1, **mesh_shape}
if mesh_shape.get("share", 1) > 1:  # work shares need every block sparse
  cfg.model.dense_layers = ()
  # ... and with them the memory settings of the big configs: remat with offloaded block
  # inputs (as "full" on CPU), the FFN over 100-token chunks of each device's 256 tokens (the
  # last one padded), one head at a time through the branches.
  cfg.model.remat = "offload_block_input"
  cfg.model.ffn_token_chunk = 100
  cfg.model.attention.head_chunk = 1
RunConfig.from_config_dict(cfg)
mesh = make_mesh(RunConfig.from_config_dict(cfg).validate_sharding(8))
single = make_mesh({"data": 1}, devices=jax.devices()[:1])
rules = ShardingRules.from_config(cfg.sharding.rules)

rng = np.random.default_rng(0)
batch = {
  "video": rng.uniform(-1, 1, (4, 16, 32, 32, 3)).astype(np.float32),
  "captions": rng.integers(97, 122, (4, 2, 48)).astype(np.uint8),
  "shot_bounds": np.asarray([[[0, 8], [8, 16]], [[0, 5], [5, 16]]] * 2, np.int32),
  "num_shots": np.asarray([2, 2, 1, 2], np.int32),
}
key = jax.random.key(3)


def check(name, got, want, tol=1e-5):
  """Relative error of every array; an array that should be ~0 (e.g. the gradient of an
  attention key bias, which softmax cancels) is measured against 1e-3 x the largest norm."""
  got = [np.asarray(x, np.float64) for x in jax.tree.leaves(got)]
  want = [np.asarray(x, np.float64) for x in jax.tree.leaves(want)]
  assert len(got) == len(want)
  floor = 1e-3 * max(np.linalg.norm(w) for w in want)
  errs = [
    np.linalg.norm(g - w) / max(np.linalg.norm(w), floor) for g, w in zip(got, want, strict=True)
  ]
  worst = max(errs)
  assert worst < tol, f"{name}: relative error {worst:.3g} >= {tol}"
  print(f"{name}: max relative error {worst:.2e} over {len(errs)} arrays")


# Forward and gradients of the loss: the same parameters, unsharded vs sharded.
reference = TextToVideo(cfg.model, rngs=nnx.Rngs(0))
sharded = TextToVideo(cfg.model, rules=rules, rngs=nnx.Rngs(1))
params = nnx.state(reference)
nnx.update(sharded, jax.device_put(params, state_shardings(params, mesh, rules)))


@nnx.jit
def loss_and_grads(model, batch):
  return nnx.value_and_grad(loss_fn, has_aux=True)(model, batch, key, cfg)


(want_loss, want_aux), want_grads = loss_and_grads(reference, batch)
with jax.set_mesh(mesh):
  sharded_batch = jax.device_put(batch, jax.NamedSharding(mesh, jax.P(("data", "fsdp"))))
  (loss, aux), grads = loss_and_grads(sharded, sharded_batch)
  shardings = {str(g.sharding.spec) for g in jax.tree.leaves(grads)}
check("forward loss", (loss, aux), (want_loss, want_aux))
check("gradients", grads, want_grads)
assert len(shardings) > 1, f"gradients all sharded alike ({shardings}): was the mesh used?"

# One training step: state built on one device vs on the mesh, from the same values.
one = init_train_state(cfg, single, rules)
many = init_train_state(cfg, mesh, rules)
start = jax.device_put(one.state, many.shardings)
with jax.set_mesh(single):
  # The step donates its input state: give it a copy so `start` stays alive.
  want_state, want_metrics = make_train_step(cfg, one)(
    jax.tree.map(jnp.copy, one.state), batch, key
  )
with jax.set_mesh(mesh):
  batch = jax.device_put(batch, many.batch_sharding)
  step = make_train_step(cfg, many)
  lowered = step.lower(start, batch, key).as_text()
  got_state, got_metrics = step(start, batch, key)
if mesh.shape["context"] > 1:  # Ulysses: sequence <-> head all-to-alls around attention
  assert lowered.count("all_to_all") >= 2 * cfg.model.num_layers, "no Ulysses all-to-all"
for path, leaf in jax.tree_util.tree_flatten_with_path(got_state)[0][:3]:
  print("sharded state:", jax.tree_util.keystr(path), leaf.sharding.spec)
check("train-step metrics", got_metrics, want_metrics)
check("train-step state", got_state, want_state)
print(f"{mesh_arg} {routing}: sharded == unsharded")
