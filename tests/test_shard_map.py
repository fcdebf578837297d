"""Kernels inside jax.shard_map on 8 fake CPU devices (a fresh process: the device count is
fixed when jax initialises)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "shard_map_kernels.py"


@pytest.mark.parametrize("impl", ["xla", "pallas_tpu", "pallas_gpu"])
def test_group_attention_inside_shard_map_equals_unsharded(impl):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, str(SCRIPT), impl], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  assert f"{impl}: sharded == unsharded" in result.stdout
