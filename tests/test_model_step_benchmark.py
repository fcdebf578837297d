"""benchmarks/model_step.py: the presets describe the runs the issue asks for, and the smoke
preset times every (mode, attention) row end to end on CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from moga_jax import DENSE, AttentionConfig, DiTConfig, MoGAAttention
from moga_jax.tools.flops import latent_and_token_grids, model_flops
from moga_jax.train.config_files import load_config_module

ROOT = Path(__file__).parents[1]
presets = load_config_module("model_step")

_spec = importlib.util.spec_from_file_location(
  "model_step_benchmark", ROOT / "benchmarks" / "model_step.py"
)
model_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_step)

KEYS = {
  "tokens",
  "mode",
  "attention",
  "median_s",
  "tflops_per_s",
  "times_s",
  "repeats",
  "compile_s",
  "flops",
  "remat",
  "device_kind",
  "backend",
  "jax",
  "error",
  "error_kind",
}


def test_gpu_preset_is_wan_1_3b_at_both_stages_clips_against_cudnn():
  bench = presets.get_config("gpu")
  assert (bench.repeats, bench.dense_implementation, bench.dtype) == (5, "cudnn", "bfloat16")
  assert bench.warmup >= 1 and tuple(bench.modes) == ("sample", "train")
  tokens = []
  for clip in bench.clips:
    dense = model_step.clip_config(bench, *clip, "dense")
    paper = model_step.clip_config(bench, *clip, "paper")
    m, a = paper.model, paper.model.attention
    assert (m.dim, m.ffn_dim, m.num_layers, m.num_heads) == (1536, 8960, 30, 12)
    assert (a.num_groups, tuple(a.stga_windows), a.frame_attention) == (5, (2, 2), True)
    assert dense.model.attention.dense_implementation == "cudnn"
    assert dense.model.attention.num_groups is None and not dense.model.attention.frame_attention
    grid = latent_and_token_grids(paper)[1]
    tokens.append(grid[0] * grid[1] * grid[2])
    # The dense config counts as dense attention in the planner's FLOPs, the paper's as less.
    assert model_flops(dense, grid)["moga"] == model_flops(paper, grid)["dense"]
    assert model_flops(paper, grid)["moga"] < 0.5 * model_flops(paper, grid)["dense"]
  assert tokens == [62_400, 187_200]
  with pytest.raises(ValueError, match="unknown preset 'cpu'"):
    presets.get_config("cpu")


@pytest.mark.subprocess
def test_smoke_preset_times_every_row_on_cpu(tmp_path):
  out = tmp_path / "model_step.json"
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "model_step.py"),
      "--config",
      str(ROOT / "configs" / "model_step.py") + ":smoke",
      "--json_out",
      str(out),
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    # This checkout's code, whatever checkout the venv's editable install points at.
    env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
    timeout=600,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  records = json.loads(out.read_text())
  assert {(r["mode"], r["attention"]) for r in records} == {
    (m, a) for m in ("sample", "train") for a in ("dense", "paper")
  }
  for r in records:
    assert KEYS <= set(r), KEYS - set(r)
    assert r["error"] is None and r["tokens"] == 48 and r["backend"] == "cpu"
    assert r["repeats"] == len(r["times_s"]) == 2 and all(t > 0 for t in r["times_s"])
    assert r["median_s"] > 0 and r["tflops_per_s"] > 0 and r["compile_s"] > 0
    assert r["tflops_per_s"] == pytest.approx(r["flops"] / r["median_s"] / 1e12)
  # FLOPs: a sampling step is 2 forwards (CFG), a training step 3 (forward + backward).
  by = {(r["mode"], r["attention"]): r for r in records}
  for attention in ("dense", "paper"):
    assert by["sample", attention]["flops"] / 2 == pytest.approx(
      by["train", attention]["flops"] / 3
    )
  assert by["sample", "dense"]["flops"] != by["sample", "paper"]["flops"]
  ratios = {s["mode"]: s for s in model_step.speedups(records)}
  for mode in ("sample", "train"):
    dense, paper = by[mode, "dense"], by[mode, "paper"]
    assert ratios[mode]["dense_over_paper"] == dense["median_s"] / paper["median_s"]
    assert ratios[mode]["flops_ratio"] == dense["flops"] / paper["flops"]
  assert "48 tokens, sample: dense / paper = " in done.stdout
  assert "48 tokens, train: dense / paper = " in done.stdout


def test_a_failing_row_is_recorded_and_the_others_still_run():
  """cuDNN attention cannot run on a CPU: the dense row records why, the paper row runs."""
  bench = presets.get_config("smoke")
  bench.dense_implementation = "cudnn"
  bench.modes = ("sample",)
  records = model_step.run(bench)
  dense, paper = records
  assert dense["attention"] == "dense" and dense["median_s"] is None
  assert dense["error_kind"] == "error" and dense["error"]
  assert paper["error"] is None and paper["median_s"] > 0
  assert model_step.speedups(records) == []  # no ratio without both rows


def test_rows_past_the_budget_are_recorded_as_skipped():
  bench = presets.get_config("smoke")
  bench.budget_s = 1e-9  # already spent when the first row would start
  records = model_step.run(bench)
  assert len(records) == 4 and all(r["error_kind"] == "skipped" for r in records)
  assert all(r["flops"] > 0 and r["median_s"] is None for r in records)


def test_dense_implementation_reaches_the_dense_blocks_and_is_checked():
  """The knob the dense rows use: kept by the config's model section (a dense section without it
  still becomes plain dense blocks), passed to jax.nn.dot_product_attention, checked by name."""
  m = load_config_module("tiny").get_config().model
  m.attention.update(DENSE)
  assert DiTConfig.from_model_section(m).attention is None
  m.attention.dense_implementation = "xla"
  kept = DiTConfig.from_model_section(m).attention
  assert kept is not None and kept.dense and kept.dense_implementation == "xla"
  with pytest.raises(ValueError, match="dense_implementation must be one of"):
    AttentionConfig(dense_implementation="flash")
  x = jax.random.normal(jax.random.key(0), (1, 32, 16))
  outs = [
    MoGAAttention(16, 2, rngs=nnx.Rngs(0), **DENSE, dense_implementation=impl)(
      x, grid_shape=(2, 4, 4)
    )[0]
    for impl in (None, "xla")
  ]
  assert jnp.array_equal(outs[0], outs[1])
  cudnn = MoGAAttention(16, 2, rngs=nnx.Rngs(0), **DENSE, dense_implementation="cudnn")
  if jax.default_backend() == "cpu":  # the knob really reaches the call
    with pytest.raises(RuntimeError, match="cuDNN"):
      cudnn(x, grid_shape=(2, 4, 4))


def test_trace_only_builds_every_row_without_running_it():
  bench = presets.get_config("smoke")
  bench.trace_only = True
  records = model_step.run(bench)
  assert [(r["mode"], r["attention"]) for r in records] == [
    (m, a) for m in ("sample", "train") for a in ("dense", "paper")
  ]
  for r in records:
    assert r["error"] is None and r["trace_s"] > 0
    assert r["median_s"] is None and r["compile_s"] is None and r["times_s"] == []
