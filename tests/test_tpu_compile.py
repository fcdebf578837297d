"""The TPU kernels compiled for real (Mosaic + XLA:TPU) from this CPU host, at the per-device
shapes of every config, for v5e and v6e; skipped where libtpu is not installed (the
`tpu-compile` extra provides it). Interpret-mode tests check the maths; these check that what
users deploy on pods compiles and fits: SMEM, HBM, Mosaic's layout rules.
"""

from __future__ import annotations

import importlib.util

import pytest

from moga_jax.tools import tpu_compile
from moga_jax.train.config_files import load_config_module
from moga_jax.train.run_config import as_run_config

reproduce = load_config_module("reproduce")
tiny = load_config_module("tiny")
wan1_3b_moga = load_config_module("wan1_3b_moga")
wan14b_moga_580k = load_config_module("wan14b_moga_580k")

needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason="libtpu is not installed (pip install -e '.[tpu-compile]')",
)

# HBM per chip: v5e 16 GiB, v6e 32 GiB.
HBM_BYTES = {"v5e": 16 << 30, "v6e": 32 << 30}
CONFIGS = {
  "tiny": tiny.get_config,
  "reproduce": lambda: reproduce.get_config().base,
  "wan1_3b_moga:stage1": lambda: wan1_3b_moga.get_config("stage1"),
  "wan1_3b_moga:stage2": lambda: wan1_3b_moga.get_config("stage2"),
  "wan14b_moga_580k": wan14b_moga_580k.get_config,
}


@pytest.mark.compile
@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("chip", ["v5e", "v6e"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_branch_of_every_config_compiles_for_tpu(name, chip):
  cfg = CONFIGS[name]()
  rows = tpu_compile.compile_config(cfg, [chip], devices=8)
  print(f"\n{name}\n{tpu_compile.format_rows(rows)}")
  assert {r["branch"] for r in rows} == set(tpu_compile.attention_shapes(cfg, 8).branches)
  for row in rows:
    assert row["ok"], f"{name} {row['branch']} on {chip}: {row.get('error')}"
    assert 0 < row["smem_prefetch_bytes"] < tpu_compile.SMEM_BYTES
    used = row["hbm_argument_bytes"] + row["hbm_output_bytes"] + row["hbm_temp_bytes"]
    assert used < HBM_BYTES[chip], f"{name} {row['branch']}: {used / 2**30:.1f} GiB of HBM"


def test_per_device_shapes_follow_the_mesh():
  shapes = tpu_compile.attention_shapes(wan14b_moga_580k.get_config())
  # fsdp=4 x context=8 x share=2, 4 clips per step: one clip per fsdp group, 40 heads over 8
  # context devices (Ulysses); the share axis splits the work, not the heads.
  assert (shapes.batch, shapes.heads, shapes.head_dim) == (1, 5, 128)
  assert shapes.grid == (364, 30, 52) and shapes.tokens == 567_840
  assert shapes.branches == ("group", "stga", "frame")
  assert sum(shapes.shot_frames) == 364
  stage2 = tpu_compile.attention_shapes(wan1_3b_moga.get_config("stage2"))
  # fsdp=8 x context=4: 12 heads over 4 context devices.
  assert (stage2.batch, stage2.heads, stage2.grid) == (1, 3, (120, 30, 52))


def test_prefetch_bytes_are_read_from_the_kernels_operands():
  hlo = """
  %start = s32[10]{0} parameter(0)
  %count.1 = s32[10]{0} parameter(1)
  %len = s32[10]{0} parameter(2)
  %idx = s32[1]{0} constant({0})
  %q = bf16[2,128,64]{2,1,0} parameter(3)
  %out = bf16[2,128,64]{2,1,0} custom-call(%start, %count.1, %len, %idx, /*index=4*/%q), \
custom_call_target="tpu_custom_call"
  """
  from pallas_kernels.block_sparse.tpu import prefetch_bytes_in_hlo

  assert prefetch_bytes_in_hlo(hlo) == 4 * (10 + 10 + 10 + 1)


def test_an_unknown_chip_is_refused():
  cfg = tiny.get_config()
  shapes = tpu_compile.attention_shapes(cfg)
  with pytest.raises(ValueError, match="chip must be one of"):
    tpu_compile.compile_branch(as_run_config(cfg).attention, shapes, "group", "v9z")


def test_a_slice_size_google_does_not_sell_is_refused():
  with pytest.raises(ValueError, match=r"v5e slices come with \[1, 4, 8, .*\] chips .*got 6"):
    tpu_compile.tpu_devices("v5e", 6)
  with pytest.raises(ValueError, match="chip must be one of"):
    tpu_compile.tpu_devices("v4", 8)


def _cost_in(text: str, kernel: str) -> dict:
  """The CostEstimate of the TPU custom call named `kernel` in lowered StableHLO text."""
  import re

  # A Mosaic call's backend config holds its cost estimate, then (after the serialized kernel)
  # its name: take the last estimate before the name.
  at = text.rfind("cost_estimate", 0, text.index(kernel))
  found = re.match(r"cost_estimate\\22: \{(.*?)\}", text[at:]) if at >= 0 else None
  assert found, f"no cost estimate before {kernel}"
  pairs = re.findall(r"\\22(\w+)\\22:(\d+)", found.group(1))
  return {name: int(value) for name, value in pairs}


@pytest.mark.compile
@needs_libtpu
def test_tpu_kernels_carry_a_cost_estimate_from_the_visit_count():
  """Routed groups (a mask that is data when tracing): the uniform-routing guess; a 3D window
  (a host-built mask): its exact visit count. Both in the lowered text XLA schedules with."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from pallas_kernels import group_attention, window_attention
  from pallas_kernels.metadata import window_layout

  device = jax.sharding.SingleDeviceSharding(tpu_compile.tpu_devices("v5e", 1)[0])
  x = jax.ShapeDtypeStruct((1, 1024, 2, 128), jnp.bfloat16, sharding=device)
  ids = jax.ShapeDtypeStruct((1, 1024), jnp.int32, sharding=device)
  tpu = dict(implementation="pallas_tpu", interpret=False, backend="tpu")

  grouped = jax.jit(lambda q, k, v, g: group_attention(q, k, v, g, num_groups=4, **tpu))
  cost = _cost_in(grouped.lower(x, x, x, ids).as_text(), "moga_group_fwd")
  pairs = 2 * 4 * 2**2  # 2 rows (heads) x 4 groups x (256 tokens = 2 tiles of 128)^2
  assert cost["flops"] == 2 * 2 * pairs * 128 * 128 * 128
  assert cost["bytes_accessed"] == 2 * pairs * 128 * 128 * 2

  grid, tile, window = (4, 16, 16), (1, 8, 16), (3, 3, 3)
  windowed = jax.jit(
    lambda q, k, v: window_attention(q, k, v, grid_shape=grid, tile=tile, window=window, **tpu)
  )
  text = windowed.lower(x, x, x).as_text()
  visits = int(np.asarray(window_layout(grid, tile, window).mask.count).sum())
  assert _cost_in(text, "moga_window_fwd")["flops"] == 2 * 2 * (2 * visits) * 128**3
  assert _cost_in(text, "moga_window_fwd")["transcendentals"] == 2 * visits * 128 * 128
