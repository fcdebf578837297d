"""The GPU kernels compiled for real (Triton passes + ptxas) for an H100, sm_90a, from this CPU
host; skipped where the `triton` package is not installed. Interpret-mode tests check the
maths; these check that what users sample with compiles for Hopper and asks for no more shared
memory than a block may have, and that no kernel spills registers to local memory.
"""

from __future__ import annotations

import importlib.util
import sys

import jax.numpy as jnp
import pytest

from moga_jax.tools import gpu_compile

needs_triton = pytest.mark.skipif(
  importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)


@pytest.mark.compile
@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("ranges", [False, True], ids=["group_mask", "range_mask"])
@pytest.mark.parametrize(
  ("dtype", "head_dim"), [("bfloat16", 64), ("bfloat16", 128), ("float32", 128)]
)
def test_every_kernel_compiles_for_h100(dtype, head_dim, ranges):
  """At the tile the ops pick by default (float32 at head_dim 128: 64 tokens)."""
  from pallas_kernels.block_sparse.dispatch import default_tile

  tile = default_tile(
    8192, implementation="pallas_gpu", interpret=False, head_dim=head_dim, dtype=dtype
  )
  rows = gpu_compile.kernel_reports(tile, head_dim, jnp.dtype(dtype), ranges=ranges)
  print(f"\n{gpu_compile.format_rows(rows)}")
  assert [r["kernel"] for r in rows] == list(gpu_compile.KERNELS)
  for r in rows:
    assert 0 < r["registers"] <= gpu_compile.MAX_REGISTERS, r
    assert 0 < r["shared_bytes"] < gpu_compile.SHARED_BYTES, r
    # Known and small: dq with range masks at head_dim 128 spills 48 B per thread in bf16
    # (sm_90a, triton 3.9; 64-query programs only took it to 8 B at twice the K/V reads). float32
    # (TF32 dots; not the fast path) spills up to 0.5 KiB in dk/dv and 56 B in dq at head_dim
    # 128; 32-key dk/dv programs still spilled 128 B.
    allowed = {("bfloat16", "dq", True, 128): 64}.get((dtype, r["kernel"], ranges, head_dim), 0)
    if dtype == "float32":
      allowed = {"dkdv": 640, "dq": 64}.get(r["kernel"], 0)
    assert r["spill_store_bytes"] <= allowed and r["spill_load_bytes"] <= allowed, r


def test_ptxas_log_is_parsed():
  log = """ptxas info    : 11 bytes gmem
ptxas info    : Compiling entry function 'moga_group_dkdv' for 'sm_90a'
ptxas info    : Function properties for moga_group_dkdv
    1536 bytes stack frame, 2332 bytes spill stores, 2204 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 1536 bytes cumulative stack size
"""
  assert gpu_compile.parse_ptxas_log(log) == {
    "registers": 255,
    "spill_store_bytes": 2332,
    "spill_load_bytes": 2204,
    "stack_bytes": 1536,
    "static_smem_bytes": 0,
  }
  with pytest.raises(ValueError, match="no register count"):
    gpu_compile.parse_ptxas_log("ptxas fatal   : Unresolved extern function")


def test_a_missing_triton_is_named(monkeypatch):
  monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
  with pytest.raises(ImportError, match="pip install triton"):
    gpu_compile.kernel_reports(128, 64)


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    (dict(tile=96, head_dim=64), ValueError, r"tokens per tile to be a power of two"),
    (dict(tile=128, head_dim=8), ValueError, r"head_dim to be a power of two >= 16, got 8"),
    (dict(tile=128, head_dim=64, launch=(8, 2)), TypeError, r"launch must be None, a gpu"),
    (
      dict(tile=128, head_dim=64, launch={"backward": None}),
      ValueError,
      r"launch names kernels \['backward'\]",
    ),
  ],
)
def test_bad_arguments_are_refused_before_compiling(kwargs, error, match):
  with pytest.raises(error, match=match):
    gpu_compile.kernel_reports(**kwargs)
