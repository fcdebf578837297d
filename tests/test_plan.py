"""The planner: token counts, whole-model FLOPs (dense and the paper's block), Table 5, the
JSON output, and the ahead-of-time compile on a fake mesh (reduced width and depth so that CI
stays fast)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moga_jax.tools.flops import (
  PAPER_TABLE5,
  TABLE5_ROWS,
  format_table5,
  model_flops,
  shot_frames,
  stga_key_sum,
  table5,
  temporal_groups,
)
from moga_jax.tools.plan import format_plan, make_plan, parse_mesh
from moga_jax.train.config_files import load_config_module

wan1_3b_moga = load_config_module("wan1_3b_moga")
wan14b_moga_580k = load_config_module("wan14b_moga_580k")

ROOT = Path(__file__).parents[1]
ONE_DEVICE = {"data": 1, "fsdp": 1, "context": 1, "tensor": 1}


def _clean_env() -> dict:
  return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def test_dense_30s_wan_1_3b_is_the_papers_6_94_pflops():
  """Table 5's full-attention 30-s cell: 477 frames of 480x832 = 187,200 tokens."""
  flops = model_flops(wan1_3b_moga.get_config("stage2"))
  assert flops["tokens"] == 187_200 and flops["token_grid"] == (120, 30, 52)
  assert flops["dense"] / 1e15 == pytest.approx(6.94, rel=0.05)
  # Self-attention is most of it: 4 N^2 dim FLOPs per block.
  assert flops["self_attention_dense"] == 30 * 4.0 * 187_200**2 * 1536
  assert flops["moga"] < flops["dense"] / 2


def test_the_papers_block_counts_every_branch():
  """M = 5 balanced groups (N^2 / 5), STGA over 6 whole-shot temporal groups of 20 latent
  frames in 2x2 windows of 15x26 tokens with one context frame per side, and per-frame
  attention (1,560 keys per query)."""
  cfg = wan1_3b_moga.get_config("stage2")
  f = model_flops(cfg)
  n, per_pair, layers = 187_200, 4.0 * 1536, 30
  b = f["self_attention_branches"]
  assert b["moga_groups"] == pytest.approx(layers * per_pair * n * n / 5)
  window = 15 * 26
  keys = 2 * (20 * 21) + 4 * (20 * 22)  # end groups see one neighbour, the others two
  assert b["stga"] == pytest.approx(layers * per_pair * 4 * keys * window**2)
  assert b["frame"] == pytest.approx(layers * per_pair * n * 30 * 52)
  assert set(b) == {"moga_groups", "stga", "frame"}
  assert f["self_attention_moga"] == pytest.approx(sum(b.values()))
  assert f["attention_density"] == pytest.approx(
    f["self_attention_moga"] / f["self_attention_dense"]
  )
  assert f["moga"] - f["dense"] == pytest.approx(
    f["self_attention_moga"] - f["self_attention_dense"] + f["linear"]["router"]
  )
  assert f["linear"]["router"] == layers * 2.0 * n * 1536 * 5  # one routing shared by heads


def test_dense_config_has_no_branches():
  cfg = wan1_3b_moga.get_config()
  a = cfg.model.attention
  a.num_groups, a.stga_windows, a.frame_attention = None, None, False
  f = model_flops(cfg)
  assert f["self_attention_branches"] == {} and f["moga"] == f["dense"]
  assert f["attention_density"] == 1.0


def _stga_pairs_brute_force(grid, shot_of_frame, windows, temporal_group, context):
  """Counts (query, key) pairs from an explicit mask, written from the definition."""
  t, h, w = grid
  # Temporal groups: maximal runs of one shot, cut into pieces of `temporal_group` frames.
  group, start = [], 0
  for i in range(t):
    if i and shot_of_frame[i] != shot_of_frame[i - 1]:
      start = i
    piece = 0 if temporal_group is None else (i - start) // temporal_group
    group.append((shot_of_frame[i], piece))
  ids = {g: k for k, g in enumerate(dict.fromkeys(group))}
  group = np.array([ids[g] for g in group])
  rows = np.concatenate(
    [
      np.full(n, i)
      for i, n in enumerate([len(x) for x in np.array_split(np.arange(h), windows[0])])
    ]
  )
  cols = np.concatenate(
    [
      np.full(n, i)
      for i, n in enumerate([len(x) for x in np.array_split(np.arange(w), windows[1])])
    ]
  )
  frame, row, col = (a.ravel() for a in np.meshgrid(np.arange(t), rows, cols, indexing="ij"))
  g = group[frame]
  same_window = (row[:, None] == row[None]) & (col[:, None] == col[None])
  frames_of = lambda k: np.flatnonzero(group == k)
  allowed = g[:, None] == g[None]
  for k in range(group.max() + 1):
    extra = []
    if k > 0:
      extra += list(frames_of(k - 1)[-context:]) if context else []
    if k < group.max():
      extra += list(frames_of(k + 1)[:context]) if context else []
    allowed[np.ix_(g == k, np.isin(frame, extra))] = True
  return int((allowed & same_window).sum())


@pytest.mark.parametrize(
  "grid, shots, windows, temporal_group, context",
  [
    ((6, 4, 6), 1, (2, 2), None, 1),
    ((7, 5, 6), 3, (2, 3), None, 1),  # uneven shots and windows (rows 3 + 2)
    ((9, 4, 4), 2, (4, 4), 2, 1),  # shots cut into 2-frame groups (a 1-frame remainder)
    ((8, 4, 4), 2, (1, 2), None, 2),
    ((8, 2, 2), 4, (1, 1), 3, 0),
  ],
)
def test_stga_key_count_matches_an_explicit_mask(grid, shots, windows, temporal_group, context):
  lengths = shot_frames(grid[0], shots)
  shot_of_frame = np.repeat(np.arange(len(lengths)), lengths)
  groups = temporal_groups(lengths, temporal_group)
  want = _stga_pairs_brute_force(grid, shot_of_frame, windows, temporal_group, context)
  assert stga_key_sum(grid, groups, windows, context) == want


def test_table5_has_every_cell_and_tracks_the_paper_at_30s():
  t = table5()
  assert t["tokens"] == [31_200, 62_400, 93_600, 124_800, 187_200] == t["paper_tokens"]
  assert t["shots"] == [1, 2, 3, 4, 6]  # one shot per 5 s
  assert tuple(t["pflops"]) == TABLE5_ROWS
  for row in TABLE5_ROWS:
    assert len(t["pflops"][row]) == 5 and all(v > 0 for v in t["pflops"][row])
    assert t["paper_pflops"][row] == list(PAPER_TABLE5[row])
    assert len(t["relative_difference"][row]) == 5
  dense = t["pflops"]["dense"]
  assert all(abs(r) < 0.05 for r in t["relative_difference"]["dense"][1:])  # 10-30 s
  for m in ("M=5", "M=10", "M=20"):
    assert all(s < d for s, d in zip(t["pflops"][m], dense, strict=True))
    assert abs(t["relative_difference"][m][-1]) < 0.10  # 30 s
  # More groups, fewer FLOPs; exactly a + b / M.
  for i in range(5):
    assert t["pflops"]["M=5"][i] > t["pflops"]["M=10"][i] > t["pflops"]["M=20"][i]
    assert t["pflops"]["M=10"][i] == pytest.approx(
      t["fixed_pflops"][i] + t["slope_pflops"][i] / 10, rel=1e-3
    )
  text = format_table5(t)
  assert "6.94" in text and "MoGA M=20, paper" in text
  one_shot = table5(shot_seconds=None)
  assert one_shot["shots"] == [1] * 5
  assert one_shot["pflops"]["M=5"][-1] > t["pflops"]["M=5"][-1]  # STGA spans the whole clip


@pytest.mark.subprocess
def test_plan_json_prints_one_object_for_the_30s_wan_config(tmp_path):
  out = tmp_path / "plan.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "moga_jax.tools.plan",
      "--config",
      str(ROOT / "configs" / "wan1_3b_moga.py") + ":stage2",
      "--json",
      "--json_out",
      str(out),
    ],
    cwd=ROOT,
    env=_clean_env(),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  plan = json.loads(result.stdout)  # stdout is the JSON object and nothing else
  assert plan["tokens"] == 187_200
  assert plan["pflops_dense"] == pytest.approx(6.94, rel=0.05)
  assert 0 < plan["pflops_moga"] < plan["pflops_dense"]
  assert 0 < plan["attention_density"] < 1
  assert json.loads(out.read_text()) == plan


@pytest.mark.subprocess
def test_table5_cli_json():
  result = subprocess.run(
    [sys.executable, "-m", "moga_jax.tools.plan", "--table5", "--json"],
    cwd=ROOT,
    env=_clean_env(),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  t = json.loads(result.stdout)
  assert set(t["pflops"]) == set(TABLE5_ROWS) and t["tokens"][-1] == 187_200


def test_plan_of_the_580k_config_on_a_one_device_mesh():
  cfg = wan14b_moga_580k.get_config()
  plan = make_plan(cfg, ONE_DEVICE)
  assert plan["latent_grid"] == (364, 60, 104) and plan["token_grid"] == (364, 30, 52)
  assert plan["tokens"] == 567_840  # the paper's ~580K, within 2.1%
  assert 14.0e9 < plan["parameters"] < 14.6e9  # Wan 2.1 14B + MoGA routers
  n = 567_840
  f = plan["flops_per_sample_forward"]
  assert f["self_attention_dense"] == 4.0 * n**2 * 5120 * 40
  b = f["self_attention_branches"]
  assert f["self_attention_moga"] == pytest.approx(b["moga_groups"] + b["stga"] + b["frame"])
  assert b["moga_groups"] == pytest.approx(f["self_attention_dense"] / 20)
  assert b["frame"] == pytest.approx(f["self_attention_dense"] * 30 * 52 / n)
  # 8 shots of 45-46 latent frames, 4x4 windows (two of 8 rows, two of 7; 13 columns).
  assert plan["shot_frames"] == [46] * 4 + [45] * 4 == plan["stga_temporal_groups"]
  window_pairs = (2 * 8**2 + 2 * 7**2) * (4 * 13**2)
  keys = 46 * 47 + 3 * 46 * 48 + 3 * 45 * 47 + 45 * 46  # one context frame each side
  assert b["stga"] == pytest.approx(40 * 4.0 * 5120 * keys * window_pairs)
  assert plan["pflops_moga"] == pytest.approx(f["moga"] / 1e15)
  assert plan["attention_density"] < 0.1
  mem = plan["per_device_bytes"]
  # Adam's mu and nu, and the gradient accumulator of its two steps per update
  assert cfg.train.grad_accum_steps == 2
  assert mem["optimizer_state"] == pytest.approx(3 * mem["params"], rel=1e-3)
  text = format_plan(plan)
  assert "567,840 tokens" in text and "stga" in text


def test_parse_mesh_errors():
  assert parse_mesh("fsdp=8,context=8") == {"fsdp": 8, "context": 8}
  with pytest.raises(ValueError, match="--mesh must look like fsdp=8,context=8"):
    parse_mesh("fsdp:8")


REDUCED = [
  "--config.model.dim=128",
  "--config.model.ffn_dim=256",
  "--config.model.num_layers=2",
  "--config.model.num_heads=8",
  "--config.model.text_dim=32",
  "--config.video.frames=17",
  "--config.video.height=128",
  "--config.video.width=128",
  "--config.video.shots=2",
  "--config.video.caption_len=8",
  "--config.train.batch_size=2",
  # 5 x 8 x 8 tokens: 4 MoGA groups, 2x2 STGA windows of 4x4 tokens over 2 shots, per-frame.
  "--config.model.attention.num_groups=4",
  "--config.model.attention.stga_windows=(2,2)",
]


@pytest.mark.subprocess
@pytest.mark.compile
@pytest.mark.slow
def test_plan_aot_compiles_the_train_step_on_a_fake_mesh(tmp_path):
  """`python -m moga_jax.tools.plan --aot` on 8 fake devices (fsdp=2 x context=4): the real training
  step lowers and compiles, and each device's arguments are a fraction of the whole state."""
  out = tmp_path / "plan.json"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "moga_jax.tools.plan",
      "--config",
      str(ROOT / "configs" / "wan14b_moga_580k.py"),
      "--mesh",
      "fsdp=2,context=4",
      "--aot",
      "--json_out",
      str(out),
      *REDUCED,
    ],
    cwd=ROOT,
    env=_clean_env(),
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  assert "ahead-of-time compile of the training step" in result.stdout
  plan = json.loads(out.read_text())
  assert plan["devices"] == 8 and plan["tokens"] == 5 * 8 * 8
  assert plan["shot_frames"] == [3, 2]
  assert set(plan["flops_per_sample_forward"]["self_attention_branches"]) == {
    "moga_groups",
    "stga",
    "frame",
  }
  aot, mem = plan["aot"], plan["per_device_bytes"]
  assert aot["temp_bytes"] > 0
  state = mem["params"] + mem["optimizer_state"]
  assert aot["argument_bytes"] >= state  # this device's shards of state + batch
  whole_state = 3 * plan["parameters"] * 4
  assert state < whole_state / 4  # sharded 8 ways (some small tensors replicated)
  assert math.isclose(plan["pflops_dense"] * 1e15, plan["flops_per_sample_forward"]["dense"])
