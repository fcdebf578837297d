"""Run by tests/test_packaging.py in a fresh process: the module layer with the core install.

  python core_ops.py [--block]

Imports moga_jax and runs MoGAAttention (all three branches), group_attention and
shot_window_attention forward and backward (xla path, CPU), checking the outputs and gradients
are finite and nonzero. With --block, a sys.meta_path finder first refuses every package of
the `train` and `wan` extras (as if they were not installed); either way it ends by checking
that none of them was imported, and prints one JSON line (the moga_jax file and version).
"""

import importlib.abc
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

# The `train` and `wan` extras' packages by import name, less optax: flax.nnx imports it, so it
# comes with flax (a core dependency) and is no extra's to withhold.
EXTRAS_PACKAGES = (
  "orbax",
  "tensorflow_datasets",
  "tensorflow",
  "grain",
  "array_record",
  "ml_collections",
  "av",
  "PIL",
  "tqdm",
  "tensorboardX",
  "matplotlib",
  "tokenizers",
  "einops",
  "huggingface_hub",
  "safetensors",
  "scenedetect",
)


class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.partition(".")[0] in EXTRAS_PACKAGES:
      raise ModuleNotFoundError(f"blocked by core_ops.py: {name}", name=name)
    return None


if "--block" in sys.argv:
  sys.meta_path.insert(0, Refuse())

import jax  # noqa: E402  (after the blocker)
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import moga_jax  # noqa: E402
from pallas_kernels import group_attention, shot_window_attention  # noqa: E402


def finite_and_nonzero(tree, what):
  for leaf in jax.tree.leaves(tree):
    assert bool(jnp.isfinite(leaf).all()), what
  assert any(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves(tree)), what


grid = (2, 4, 4)  # T, H, W
tokens = 2 * 4 * 4
attention = moga_jax.MoGAAttention(
  32, 2, num_groups=3, stga_windows=(2, 2), implementation="xla", rngs=nnx.Rngs(0)
)
x = jax.random.normal(jax.random.key(1), (2, tokens, 32))
shots = jnp.array([[0, 1], [0, 0]], jnp.int32)


def module_loss(module, x):
  out, balance = module(x, grid_shape=grid, frame_shot=shots)
  return jnp.mean(out**2) + balance


out, balance = attention(x, grid_shape=grid, frame_shot=shots)
assert out.shape == x.shape, out.shape
finite_and_nonzero(out, "MoGAAttention forward")
grads = nnx.grad(module_loss, argnums=(0, 1))(attention, x)
finite_and_nonzero(grads, "MoGAAttention gradients")

q, k, v = (jax.random.normal(s, (2, tokens, 2, 16)) for s in jax.random.split(jax.random.key(2), 3))
ids = jax.random.randint(jax.random.key(3), (2, tokens), 0, 3)
ops = {
  "group_attention": lambda q, k, v: group_attention(
    q, k, v, ids, num_groups=3, implementation="xla"
  ),
  "shot_window_attention": lambda q, k, v: shot_window_attention(
    q, k, v, shots, grid_shape=grid, spatial_groups=(2, 2), implementation="xla"
  ),
}
for name, op in ops.items():
  finite_and_nonzero(op(q, k, v), f"{name} forward")
  finite_and_nonzero(
    jax.grad(lambda q, k, v, op=op: jnp.sum(op(q, k, v) ** 2), argnums=(0, 1, 2))(q, k, v),
    f"{name} gradients",
  )

loaded = sorted({m.partition(".")[0] for m in sys.modules} & set(EXTRAS_PACKAGES))
assert not loaded, f"the module layer imported extras' packages: {loaded}"
print(json.dumps({"file": moga_jax.__file__, "version": moga_jax.__version__}))
