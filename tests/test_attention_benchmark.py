"""benchmarks/attention.py: every preset builds, and the block path runs end to end (tiny)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moga_jax.train.config_files import load_config_module

attention_bench = load_config_module("attention_bench")

ROOT = Path(__file__).parents[1]

PRESETS = ("demo", "full", "long", "interpret", "gpu", "block", "gpu_block")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds(preset):
  cfg = attention_bench.get_config(preset)
  assert cfg.preset == preset and cfg.seq_lens
  assert cfg.block == (preset in ("block", "gpu_block"))
  if preset.startswith("gpu"):
    assert cfg.implementations == ("pallas_gpu",) and cfg.dtype == "bfloat16"


def test_an_unknown_preset_is_named():
  with pytest.raises(ValueError, match="unknown preset 'gpu_blok'"):
    attention_bench.get_config("gpu_blok")


@pytest.mark.subprocess
def test_gpu_block_preset_runs_on_cpu_at_tiny_size(tmp_path):
  """The preset the H200 ran, with the xla kernels and 2 frames of 32 x 32 tokens."""
  out = tmp_path / "block.json"
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "attention.py"),
      "--config",
      str(ROOT / "configs" / "attention_bench.py") + ":gpu_block",
      "--config.implementations=('xla',)",
      "--config.dense_implementation=xla",
      "--config.dtype=float32",
      "--config.head_dim=16",
      "--config.heads=2",
      "--config.seq_lens=(2048,)",
      "--config.repeats=1",
      f"--config.out={out}",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  rows = json.loads(out.read_text())["rows"]
  assert [r["impl"] for r in rows] == ["dense", "moga", "stga", "frame", "paper"]
  shares = {r["impl"]: r["work_share"] for r in rows}
  assert shares["paper"] == pytest.approx(shares["moga"] + shares["stga"] + shares["frame"])
  assert all(r["time_s"] > 0 for r in rows)
