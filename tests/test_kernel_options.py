"""KernelOptions: one frozen value of kernel knobs, from the ops, the module and the config to
the kernels; a knob changes speed, never the result."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_close, random_qkv
from jax import export

from moga_jax.model.attention import MoGAAttention
from moga_jax.model.text_to_video import TextToVideo
from moga_jax.train.checkpoint import check_config
from moga_jax.train.config_files import load_config_module
from moga_jax.train.run_config import RunConfig
from pallas_kernels import KernelOptions, group_attention, shot_window_attention
from pallas_kernels.block_sparse.gpu import LaunchParams, launch_params


@pytest.mark.parametrize(
  ("fields", "match"),
  [
    ({"xla_chunk_tokens": 0}, "xla_chunk_tokens must be a positive int, got 0"),
    ({"num_warps": 6}, "num_warps must be a power of two, got 6"),
    ({"num_stages": 1.5}, "num_stages must be a positive int, got 1.5"),
    ({"num_stages": True}, "num_stages must be a positive int, got True"),
  ],
)
def test_bad_options_are_named(fields, match):
  with pytest.raises(ValueError, match=match):
    KernelOptions(**fields)


def test_interpret_is_checked():
  with pytest.raises(TypeError, match=r"KernelOptions.interpret must be None, a bool or .*got str"):
    KernelOptions(interpret="yes")


def test_options_from_a_mapping():
  assert KernelOptions.of(None) == KernelOptions()
  assert KernelOptions.of({"num_warps": 4}) == KernelOptions(num_warps=4)
  with pytest.raises(ValueError, match=r"unknown kernel option\(s\) \['warps'\]"):
    KernelOptions.of({"warps": 4})
  with pytest.raises(TypeError, match="options must be None, a KernelOptions or a mapping"):
    KernelOptions.of(4)
  hash(KernelOptions(num_stages=3))  # a static jit argument


def test_the_xla_chunk_changes_nothing_but_speed(key):
  q, k, v = random_qkv(key, (2, 300, 2, 16))
  ids = jax.random.randint(jax.random.fold_in(key, 1), (2, 300), 0, 5)
  shots = jnp.array([[0, 0, 1], [0, 1, 1]])

  def run(options):
    def loss(q, k, v):
      group = group_attention(
        q, k, v, ids, num_groups=5, implementation="xla", tile=16, options=options
      )
      stga = shot_window_attention(
        q, k, v, shots, grid_shape=(3, 10, 10), implementation="xla", tile=16, options=options
      )
      return jnp.sum(jnp.sin(group)) + jnp.sum(jnp.cos(stga))

    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  (want, want_grads) = run(None)
  # The default (2048) advances every tile at once here; 16: one tile per chunk, 48: a ragged
  # last chunk.
  for chunk in (16, 48):
    got, grads = run(KernelOptions(xla_chunk_tokens=chunk))
    assert_close(got, want, what=f"loss, chunk {chunk}")
    for g, w in zip(grads, want_grads, strict=True):
      assert_close(g, w, what=f"grad, chunk {chunk}")


def test_interpret_may_not_contradict_the_options():
  q = jnp.ones((1, 64, 1, 16))
  with pytest.raises(ValueError, match=r"interpret=True contradicts options.interpret=False"):
    group_attention(
      q,
      q,
      q,
      jnp.zeros((1, 64), jnp.int32),
      num_groups=1,
      implementation="pallas_gpu",
      interpret=True,
      options=KernelOptions(interpret=False),
      backend="gpu",
    )


def test_triton_launch_parameters_reach_the_kernels():
  """Explicit warps and stages replace the heuristic in every lowered GPU kernel."""
  from jax._src import mesh as mesh_lib

  assert launch_params(tile=128, head_dim=128) == LaunchParams(8, 2)  # the measured default
  three = KernelOptions(num_stages=3)
  assert launch_params(tile=128, head_dim=128, options=three) == LaunchParams(8, 3)
  if not hasattr(mesh_lib, "AbstractDevice"):
    pytest.skip("this JAX cannot target an abstract GPU")
  q = jax.ShapeDtypeStruct((1, 1024, 2, 64), jnp.bfloat16)
  ids = jnp.arange(1024)[None] % 2
  options = KernelOptions(interpret=False, num_warps=2, num_stages=3)
  grad = jax.grad(
    lambda q: (
      group_attention(
        q, q, q, ids, num_groups=2, implementation="pallas_gpu", backend="gpu", options=options
      )
      .astype(jnp.float32)
      .sum()
    )
  )
  h100 = mesh_lib.AbstractDevice(
    device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda"
  )
  unchecked = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  with jax.sharding.use_abstract_mesh(
    jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)
  ):
    text = export.export(jax.jit(grad), platforms=["cuda"], disabled_checks=unchecked)(
      q
    ).mlir_module()
  assert re.findall(r"num_warps = (\d+)", text) == ["2"] * 3  # forward, dq, dk/dv
  assert re.findall(r"num_stages = (\d+)", text) == ["3"] * 3


def test_the_module_and_the_config_carry_the_options(key):
  attn = MoGAAttention(
    32,
    2,
    num_groups=3,
    stga_windows=None,
    kernel_options={"xla_chunk_tokens": 64},
    implementation="xla",
    rngs=nnx.Rngs(0),
  )
  assert attn.kernel_options == KernelOptions(xla_chunk_tokens=64)
  cfg = load_config_module("tiny").get_config()
  cfg.model.attention.kernel_options.num_stages = 3
  RunConfig.from_config_dict(cfg)
  model = nnx.eval_shape(lambda: TextToVideo(cfg.model, rngs=nnx.Rngs(0)))
  found = {  # the DiT's MoGA blocks (the text encoder's attention is dense: no kernels)
    m.kernel_options
    for _, m in nnx.iter_graph(model)
    if isinstance(m, MoGAAttention) and m.num_groups is not None
  }
  assert found == {KernelOptions(num_stages=3)}
  # A compute knob: a checkpoint trained with other kernel options still matches.
  saved = {"attention": {"kernel_options": {"num_stages": None}, "num_groups": 4}}
  current = {"attention": {"kernel_options": {"num_stages": 3}, "num_groups": 4}}
  check_config(saved, current, where="run")
  with pytest.raises(Exception, match="num_groups"):
    check_config(saved, {"attention": {"kernel_options": {}, "num_groups": 5}}, where="run")


def test_visits_per_row_is_checked_and_changes_no_result(key):
  """The TPU cost hint is a hint: a bad one is named, a good one leaves the output alone."""
  with pytest.raises(ValueError, match="visits_per_row must be a positive number"):
    KernelOptions(visits_per_row=0)
  q, k, v = (jax.random.normal(s, (1, 64, 2, 16)) for s in jax.random.split(key, 3))
  ids = jax.random.randint(key, (1, 64), 0, 3)
  run = lambda o: group_attention(q, k, v, ids, num_groups=3, implementation="xla", options=o)
  np.testing.assert_array_equal(run(None), run(KernelOptions(visits_per_row=7.5)))
