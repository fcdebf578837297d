"""Run by tests/test_shard_map.py in a fresh process with 8 fake CPU devices.

Every implementation of group_attention inside `jax.shard_map` (heads split over a mesh axis,
batch over another) must equal the unsharded call, forward and gradients.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
# Fake CPU devices on any machine: on a GPU or TPU host jax would otherwise pick the one real chip.
os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

from pallas_kernels import group_attention

assert jax.device_count() == 8, jax.devices()
mesh = jax.make_mesh((2, 4), ("data", "heads"), axis_types=(AxisType.Explicit,) * 2)
P = jax.P
keys = jax.random.split(jax.random.key(0), 4)
q, k, v = (jax.random.normal(s, (2, 64, 8, 16)) for s in keys[:3])
ids = jax.random.randint(keys[3], (2, 64, 8), 0, 5)
w = jax.random.normal(jax.random.key(1), q.shape)

for impl in sys.argv[1:]:

  def attention(q, k, v, ids, impl=impl):
    return group_attention(q, k, v, ids, num_groups=5, implementation=impl, tile=16)

  sharded = jax.shard_map(
    attention,
    mesh=mesh,
    in_specs=(P("data", None, "heads"),) * 4,
    out_specs=P("data", None, "heads"),
    check_vma=False,
  )

  spec = jax.NamedSharding(mesh, P("data", None, "heads"))
  qs, ks, vs, ids_s = (jax.device_put(x, spec) for x in (q, k, v, ids))
  with jax.set_mesh(mesh):
    out = jax.jit(sharded)(qs, ks, vs, ids_s)
    grads = jax.jit(
      jax.grad(
        lambda q, k, v, f=sharded, ids=ids_s: jnp.sum(f(q, k, v, ids) * w), argnums=(0, 1, 2)
      )
    )(qs, ks, vs)
  assert out.sharding.is_equivalent_to(spec, out.ndim), out.sharding
  want = attention(q, k, v, ids)
  want_grads = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, ids) * w), argnums=(0, 1, 2))(
    q, k, v
  )
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  for g, wg in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(g, wg, rtol=1e-5, atol=1e-5)
  print(f"{impl}: sharded == unsharded", flush=True)
