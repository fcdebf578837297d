"""Kernels inside jax.shard_map on 8 fake CPU devices (a fresh process: the device count is
fixed when jax initialises)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "shard_map_kernels.py"


IMPLEMENTATIONS = ("xla", "pallas_tpu", "pallas_gpu")


@pytest.mark.subprocess
def test_group_attention_inside_shard_map_equals_unsharded():
  """One process checks every implementation (one jax start-up instead of three)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(
    [sys.executable, str(SCRIPT), *IMPLEMENTATIONS],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
    check=False,
  )
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  for impl in IMPLEMENTATIONS:
    assert f"{impl}: sharded == unsharded" in result.stdout, result.stdout
