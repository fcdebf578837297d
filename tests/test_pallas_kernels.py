"""The block-sparse kernels beyond numerics: poisoning, the TPU simulator, and lowering for
TPU (Mosaic) and GPU (Triton) hardware from this CPU machine."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, random_qkv
from jax import export
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import group_attention
from pallas_kernels.block_sparse.gpu import block_sparse_attention_gpu
from pallas_kernels.block_sparse.ops import block_sparse_attention
from pallas_kernels.block_sparse.tpu import block_sparse_attention_tpu
from pallas_kernels.metadata import group_layout, pack_tiles, window_layout


@pytest.mark.parametrize("impl", ["xla", "pallas_tpu", "pallas_gpu"])
def test_rows_no_key_tile_reaches_are_nan(impl):
  """Unvisited rows come out NaN (the Pallas interpreter also NaN-fills unwritten outputs), so
  a metadata bug cannot pass as a zero output."""
  tile, n, d = 16, 96, 8
  ids = jax.random.randint(jax.random.key(1), (1, n), 0, 3)
  layout = group_layout(ids, num_groups=3, tile=tile)
  x = pack_tiles(jax.random.normal(jax.random.key(2), (1, 1, n, d)), layout)[0]  # [1, L, d]
  tiles = lambda out: np.asarray(out).reshape(-1, tile, d)
  run = lambda mask: block_sparse_attention(x, x, x, mask, scale=0.5, implementation=impl)
  used = np.asarray(layout.mask.count[0]) > 0
  out = tiles(run(layout.mask))
  assert np.isfinite(out[used]).all() and np.isnan(out[~used]).all()
  broken = layout.mask._replace(count=layout.mask.count.at[0, 0].set(0))
  out = tiles(run(broken))
  assert np.isnan(out[0]).all() and np.isfinite(out[1:][used[1:]]).all()


@pytest.mark.slow
def test_tpu_kernel_on_the_tpu_simulator(key):
  """The stricter TPU interpreter: NaN-initialised memory, DMA and semaphore semantics."""
  k1, k2 = jax.random.split(key)
  q, k, v = random_qkv(k1, (1, 40, 2, 8))
  ids = jax.random.randint(k2, (1, 40, 2), 0, 3)
  params = pltpu.InterpretParams(uninitialized_memory="nan")

  def loss(impl, interpret=None):
    def f(q, k, v):
      out = group_attention(q, k, v, ids, num_groups=3, implementation=impl, tile=8,
                            interpret=interpret)
      return jnp.sum(jnp.sin(out)), out

    return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)

  (_, out), grads = loss("pallas_tpu", params)(q, k, v)
  (_, ref), ref_grads = loss("reference")(q, k, v)
  assert_close(out, ref)
  for name, g, w in zip("qkv", grads, ref_grads, strict=True):
    assert_close(g, w, what=f"d{name}")


def _lower_for_tpu(mask, length):
  """Exports forward + backward for TPU on this CPU: runs the Pallas Mosaic lowering."""
  spec = jax.ShapeDtypeStruct((2, length, 128), jnp.bfloat16)

  def f(q, k, v):
    loss = lambda q, k, v: block_sparse_attention_tpu(q, k, v, mask, 0.1, False).astype(
        jnp.float32).sum()
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  return export.export(jax.jit(f), platforms=["tpu"])(spec, spec, spec).mlir_module()


def test_tpu_kernels_lower_for_mosaic():
  """Hardware lowering, not interpret mode: the kernels must pass Mosaic's checks (block
  shapes, layouts, scalar prefetch, dynamic grid) for both metadata kinds."""
  ids = jax.random.randint(jax.random.key(0), (2, 1000), 0, 4)
  layout = group_layout(ids, num_groups=4, tile=128)
  module = _lower_for_tpu(layout.mask, layout.capacity)
  assert module.count("tpu_custom_call") == 3  # forward, dq, dk/dv
  window = window_layout((4, 8, 16), (1, 8, 16), (3, 1, 1))
  mask = jax.tree.map(lambda a: jnp.broadcast_to(a, (2, a.shape[-1])), window.mask)
  assert _lower_for_tpu(mask, window.capacity).count("tpu_custom_call") == 3


def _lower_for_gpu(mask, length):
  """Exports forward + backward for an H100 on this CPU: runs the Pallas Triton lowering."""
  from jax._src import mesh as mesh_lib  # AbstractDevice has no public home yet

  if not hasattr(mesh_lib, "AbstractDevice"):
    pytest.skip("this JAX cannot target an abstract GPU")
  device = mesh_lib.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=None,
                                   platform="cuda")
  spec = jax.ShapeDtypeStruct((2, length, 128), jnp.bfloat16)

  def f(q, k, v):
    loss = lambda q, k, v: block_sparse_attention_gpu(q, k, v, mask, 0.1, False).astype(
        jnp.float32).sum()
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  unchecked = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  with jax.sharding.use_abstract_mesh(
      jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
    exported = export.export(jax.jit(f), platforms=["cuda"], disabled_checks=unchecked)
    return exported(spec, spec, spec).mlir_module()


def test_gpu_kernels_lower_for_triton():
  """Triton lowering for sm90 (the PTX compile itself happens on a GPU, not here)."""
  ids = jax.random.randint(jax.random.key(0), (2, 1000), 0, 4)
  layout = group_layout(ids, num_groups=4, tile=128)
  assert _lower_for_gpu(layout.mask, layout.capacity).count("xla.gpu.triton(") == 3
  window = window_layout((4, 8, 16), (1, 8, 16), (3, 1, 1))
  mask = jax.tree.map(lambda a: jnp.broadcast_to(a, (2, a.shape[-1])), window.mask)
  assert _lower_for_gpu(mask, window.capacity).count("xla.gpu.triton(") == 3


@pytest.mark.parametrize("keys", [8, 16])
def test_gpu_dkdv_in_key_sub_blocks_is_exact(monkeypatch, key, keys):
  """dk/dv programs that own part of a key tile (gpu.DKDV_KEYS, 64 of 128 on hardware) give
  the reference's gradients, for group tiles and for range masks (STGA: partial key ranges)."""
  from pallas_kernels import shot_window_attention
  from pallas_kernels.block_sparse import gpu

  monkeypatch.setattr(gpu, "DKDV_KEYS", keys)
  jax.clear_caches()  # traces cached at the default size would hide the sub-blocks
  shape = (1, 4 * 6 * 6, 2, 16)
  q, k, v = random_qkv(key, shape)
  ids = jax.random.randint(jax.random.fold_in(key, 1), shape[:2], 0, 3)
  shots = jnp.array([[0, 0, 1, 1]], jnp.int32)
  ops = {
      "groups": lambda impl, q, k, v: group_attention(
          q, k, v, ids, num_groups=3, implementation=impl, tile=32),
      "stga": lambda impl, q, k, v: shot_window_attention(
          q, k, v, shots, grid_shape=(4, 6, 6), spatial_groups=(2, 2), implementation=impl,
          tile=32),
  }
  for name, op in ops.items():
    cotangent = jax.random.normal(jax.random.fold_in(key, 2), shape)
    grads = lambda impl, op=op, ct=cotangent: jax.vjp(lambda *x: op(impl, *x), q, k, v)[1](ct)
    for got, want in zip(grads("pallas_gpu"), grads("reference"), strict=True):
      assert_close(got, want, jnp.float32), name
  jax.clear_caches()
