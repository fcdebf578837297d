"""The TPU kernels compiled for real (Mosaic + XLA:TPU) from this CPU host, at the per-device
shapes of every config, for v5e and v6e; skipped where libtpu is not installed (the
`tpu-compile` extra provides it). Interpret-mode tests check the maths; these check that what
users deploy on pods compiles and fits: SMEM, HBM, Mosaic's layout rules.
"""

from __future__ import annotations

import importlib.util

import pytest

from moga_jax import tpu_compile
from moga_jax.config_files import load_config_module

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
  # fsdp=8 x context=8: one clip per fsdp group, 40 heads over 8 context devices (Ulysses).
  assert (shapes.batch, shapes.heads, shapes.head_dim) == (1, 5, 128)
  assert shapes.grid == (361, 30, 52) and shapes.tokens == 563_160
  assert shapes.branches == ("group", "stga", "frame")
  assert sum(shapes.shot_frames) == 361
  stage2 = tpu_compile.attention_shapes(wan1_3b_moga.get_config("stage2"), devices=8)
  assert (stage2.batch, stage2.heads, stage2.grid) == (1, 12, (120, 30, 52))


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
    tpu_compile.compile_branch(cfg, shapes, "group", "v9z")


def test_a_slice_size_that_is_not_a_power_of_two_is_refused():
  with pytest.raises(ValueError, match="power-of-two number of chips, got 6"):
    tpu_compile.tpu_devices("v5e", 6)
  with pytest.raises(ValueError, match="chip must be one of"):
    tpu_compile.tpu_devices("v4", 8)
