"""Run by tests/test_sharding.py in a fresh process with 16 fake CPU devices.

  python shared_attention.py context=2,share=4,data=2 [xla|pallas_tpu]

The paper's block (MoGAAttention: routed groups, 2x2 STGA, per-frame attention) with the
sequence split context x share ways, past the head count (4 heads, context 2: Ulysses alone
stops at 4), must equal the block on one device: output, balancing loss and the gradients of
every parameter and of the input. Routing is skewed on purpose (one group takes most tokens,
one group stays empty) and each sample has its own random shot layout.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=16"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moga_jax.model.attention import MoGAAttention
from moga_jax.parallel.sharding import MESH_AXES, ShardingRules, make_mesh, state_shardings
from moga_jax.train.config_files import load_config_module

assert jax.device_count() == 16, jax.devices()
mesh_arg, implementation = sys.argv[1], sys.argv[2]
shape = {a: 1 for a in MESH_AXES} | {
  k: int(v) for k, v in (kv.split("=") for kv in mesh_arg.split(","))
}
mesh = make_mesh(shape, devices=jax.devices()[: int(np.prod(list(shape.values())))])
rules = ShardingRules.from_config(load_config_module("parallelism").RULES)

grid, batch, dim, heads = (8, 4, 8), 2, 64, 4
settings = dict(
  num_groups=5, stga_windows=(2, 2), frame_attention=True, implementation=implementation
)
reference = MoGAAttention(dim, heads, rngs=nnx.Rngs(0), **settings)
sharded = MoGAAttention(dim, heads, rules=rules, rngs=nnx.Rngs(1), **settings)
# Skewed routing: groups 1, 2 and 4 get small logits, so group 0 takes most tokens, and group
# 3 ties with group 0 everywhere (argmax takes the first), so it stays empty.
kernel = reference.router.proj.kernel
w = kernel[...]
kernel[...] = w.at[:, (1, 2, 4)].multiply(0.2).at[:, 3].set(w[:, 0])
params = nnx.state(reference)
nnx.update(sharded, jax.device_put(params, state_shardings(params, mesh, rules)))

rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(batch, int(np.prod(grid)), dim)), jnp.float32)
cuts = rng.random((batch, grid[0])) < 0.4
cuts[:, 0] = False
frame_shot = jnp.asarray(np.cumsum(cuts, axis=1), jnp.int32)
cotangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)


@nnx.jit
def run(module, x, frame_shot):
  def loss(module, x):
    out, balance = module(x, grid_shape=grid, frame_shot=frame_shot)
    return jnp.sum(out * cotangent) + balance, (out, balance)

  return nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(module, x)


(want, (want_out, want_balance)), want_grads = run(reference, x, frame_shot)
ids = np.asarray(reference.router(x).group_ids).ravel()
sizes = np.bincount(ids, minlength=5)
assert sizes[3] == 0 and sizes.max() > 0.4 * ids.size, f"routing not skewed: {sizes}"
with jax.set_mesh(mesh):
  spec = jax.NamedSharding(mesh, rules.spec("activation_batch", "activation_length", None))
  (got, (out, balance)), grads = run(sharded, jax.device_put(x, spec), frame_shot)
  text = jax.jit(lambda x: sharded(x, grid_shape=grid, frame_shot=frame_shot)[0]).lower(x)
  text = text.as_text()
assert "all-gather" in text or "all_gather" in text, "no all-gather over the share axis"
assert "reduce_scatter" in text or "reduce-scatter" in text, "no reduce-scatter of the shares"


def check(name, got, want, tol=1e-5):
  got = [np.asarray(a, np.float64) for a in jax.tree.leaves(got)]
  want = [np.asarray(a, np.float64) for a in jax.tree.leaves(want)]
  floor = 1e-3 * max(np.linalg.norm(w) for w in want)
  worst = max(
    np.linalg.norm(g - w) / max(np.linalg.norm(w), floor) for g, w in zip(got, want, strict=True)
  )
  assert worst < tol, f"{name}: relative error {worst:.3g}"
  print(f"{name}: max relative error {worst:.2e}")


check("output", (out, balance), (want_out, want_balance))
check("loss", got, want)
check("gradients", grads, want_grads)
print(f"{mesh_arg} {implementation}: shared == unsharded (group sizes {sizes.tolist()})")
