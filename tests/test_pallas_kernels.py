"""The block-sparse kernels beyond numerics: poisoning, the TPU simulator, and lowering for
TPU (Mosaic) and GPU (Triton) hardware from this CPU machine."""

from __future__ import annotations

import contextlib
import functools
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, check_against_reference, random_qkv
from jax import export
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import frame_attention, group_attention, shot_window_attention, window_attention
from pallas_kernels.block_sparse.gpu import block_sparse_attention_gpu
from pallas_kernels.block_sparse.layout_ops import ATTENTION_OUT_NAME, block_sparse_attention
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.block_sparse.tpu import block_sparse_attention_tpu
from pallas_kernels.metadata import group_layout, pack_tiles, window_layout

COMPILED = KernelOptions(interpret=False)  # hardware lowering, not interpret mode


@pytest.mark.parametrize("impl", ["xla", "pallas_tpu", "pallas_gpu"])
def test_rows_no_key_tile_reaches_are_nan(impl):
  """Unvisited rows come out NaN (the Pallas interpreter also NaN-fills unwritten outputs), so
  a metadata bug cannot pass as a zero output."""
  tile, n, d = 16, 96, 16
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
      out = group_attention(
        q, k, v, ids, num_groups=3, implementation=impl, tile=8, interpret=interpret
      )
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
    loss = lambda q, k, v: (
      block_sparse_attention_tpu(q, k, v, mask, 0.1, COMPILED).astype(jnp.float32).sum()
    )
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
  device = mesh_lib.AbstractDevice(
    device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda"
  )
  spec = jax.ShapeDtypeStruct((2, length, 128), jnp.bfloat16)

  def f(q, k, v):
    loss = lambda q, k, v: (
      block_sparse_attention_gpu(q, k, v, mask, 0.1, COMPILED).astype(jnp.float32).sum()
    )
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  unchecked = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  with jax.sharding.use_abstract_mesh(
    jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
  ):
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


def test_gpu_dkdv_in_key_sub_blocks_is_exact(monkeypatch, key):
  """dk/dv programs that own part of a key tile (gpu.DKDV_KEYS, 64 of 128 on hardware; here 16
  of 32) give the reference's gradients, for group tiles and for range masks (STGA: partial
  key ranges)."""
  from pallas_kernels.block_sparse import gpu

  monkeypatch.setattr(gpu, "DKDV_KEYS", 16)
  jax.clear_caches()  # traces cached at the default size would hide the sub-blocks
  shape = (1, 4 * 6 * 6, 2, 16)
  ids = jax.random.randint(jax.random.fold_in(key, 1), shape[:2], 0, 3)
  shots = jnp.array([[0, 0, 1, 1]], jnp.int32)
  ops = {
    "groups": lambda q, k, v, impl: group_attention(
      q, k, v, ids, num_groups=3, implementation=impl, tile=32
    ),
    "stga": lambda q, k, v, impl: shot_window_attention(
      q, k, v, shots, grid_shape=(4, 6, 6), spatial_groups=(2, 2), implementation=impl, tile=32
    ),
  }
  for name, op in ops.items():
    check_against_reference(op, jax.random.fold_in(key, len(name)), shape, "pallas_gpu")
  jax.clear_caches()


_PATTERNS = {
  "group": lambda q, **kw: group_attention(
    q, q, q, jnp.arange(q.shape[1])[None] % 2, num_groups=2, **kw
  ),
  "stga": lambda q, **kw: shot_window_attention(
    q, q, q, jnp.array([[0, 0, 1, 1]]), grid_shape=(4, 16, 16), **kw
  ),
  "frame": lambda q, **kw: frame_attention(q, q, q, grid_shape=(4, 16, 16), **kw),
  "window": lambda q, **kw: window_attention(
    q, q, q, grid_shape=(4, 16, 16), tile=(1, 8, 16), window=(3, 1, 1), **kw
  ),
}


@pytest.mark.parametrize(
  ("impl", "pattern"),
  [("pallas_tpu", "group"), ("pallas_gpu", "stga"), ("xla", "frame"), ("pallas_gpu", "window")],
)
def test_kernels_and_stages_carry_their_names(impl, pattern):
  """A profile names what it shows: moga_<pattern>_<fwd|dq|dkdv> on the pallas_calls (the xla
  sweeps' scopes), moga_<pattern>/pack|attend|unpack on the stages around them."""
  from jax._src import mesh as mesh_lib

  q = jax.ShapeDtypeStruct((1, 4 * 16 * 16, 2, 64), jnp.bfloat16)
  platform = {"pallas_tpu": "tpu", "pallas_gpu": "cuda", "xla": "cpu"}[impl]
  kw = dict(implementation=impl)
  if impl != "xla":
    kw |= dict(interpret=False, backend="gpu" if platform == "cuda" else platform)
  op = functools.partial(_PATTERNS[pattern], **kw)
  grad = jax.value_and_grad(lambda q: op(q).astype(jnp.float32).sum())
  exporting = export.export(
    jax.jit(grad),
    platforms=[platform],
    disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
  )
  if platform == "cuda":
    if not hasattr(mesh_lib, "AbstractDevice"):
      pytest.skip("this JAX cannot target an abstract GPU")
    h100 = mesh_lib.AbstractDevice(
      device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda"
    )
    with jax.sharding.use_abstract_mesh(
      jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)
    ):
      text = exporting(q).mlir_module()
  else:
    text = exporting(q).mlir_module()
  assert set(re.findall(r"moga_[a-z]+_(?:fwd|dq|dkdv)\b", text)) == {
    f"moga_{pattern}_{kind}" for kind in ("fwd", "dq", "dkdv")
  }
  for stage in ("pack", "attend", "unpack"):
    assert f"moga_{pattern}/{stage}" in text, stage
  # The output carries a name a remat policy can save (names live in the jaxpr, not in HLO).
  assert f"name={ATTENTION_OUT_NAME}" in str(jax.make_jaxpr(grad)(q))


def test_a_remat_policy_can_keep_the_attention_output(key):
  """save_only_these_names(ATTENTION_OUT_NAME) keeps the kernel's output as a residual of a
  rematerialised block (and the gradients stay the same)."""
  from jax.ad_checkpoint import print_saved_residuals

  q, k, v = random_qkv(key, (1, 64, 2, 16))
  ids = jnp.arange(64)[None] % 3
  block = lambda q, k, v: jnp.sin(
    group_attention(q, k, v, ids, num_groups=3, implementation="xla", tile=16)
  ).sum()
  policies = {
    "none": jax.checkpoint_policies.nothing_saveable,
    "out": jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT_NAME),
  }
  grads, saved = {}, {}
  for name, policy in policies.items():
    remat = jax.checkpoint(block, policy=policy)
    grads[name] = jax.grad(remat, argnums=(0, 1, 2))(q, k, v)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
      print_saved_residuals(remat, q, k, v)
    saved[name] = printed.getvalue()
  # One residual more: the kernel's tiled output, [batch x heads, tiled tokens, head_dim].
  extra = set(saved["out"].splitlines()) - set(saved["none"].splitlines())
  assert len(saved["out"].splitlines()) == len(saved["none"].splitlines()) + 1
  assert len(extra) == 1 and re.match(r"f32\[2,\d+,16\]", extra.pop())
  for got, want in zip(grads["out"], grads["none"], strict=True):
    assert_close(got, want)
