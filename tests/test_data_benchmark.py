"""benchmarks/data.py: both presets build, and the smoke preset runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moga_jax.train.config_files import load_config_module

data_bench = load_config_module("data_bench")

ROOT = Path(__file__).parents[1]


def test_presets_build_and_an_unknown_one_is_named():
  default = data_bench.get_config()
  assert [s.name for s in default.shapes] == ["tiny", "wan"]
  wan = default.shapes[1]
  # The Wan sample (81 frames at 16 fps, from 0.5 s on) fits in the source videos.
  assert 0.5 + wan.num_frames / wan.fps <= default.source_seconds
  assert data_bench.get_config("smoke").videos == 2
  with pytest.raises(ValueError, match="preset must be 'default' or 'smoke'"):
    data_bench.get_config("fast")


@pytest.mark.subprocess
def test_smoke_preset_times_every_stage(tmp_path):
  out = tmp_path / "data.json"
  subprocess.run(
    [
      sys.executable,
      "benchmarks/data.py",
      "--config",
      "configs/data_bench.py:smoke",
      f"--config.workdir={tmp_path / 'work'}",
      f"--config.json_out={out}",
    ],
    cwd=ROOT,
    check=True,
    capture_output=True,
    text=True,
    timeout=600,
  )
  rows = json.loads(out.read_text())["rows"]
  stages = {(r["stage"], r["workers"]) for r in rows}
  assert stages == {("decode", 0), ("decode", 1), ("build", 0), ("load", 0), ("load", 1)}
  assert all(r["samples_per_s"] > 0 and r["shape"] == "tiny" for r in rows)
