"""The 580K planner: token count, parameters, FLOPs, and the ahead-of-time compile on a fake
mesh (reduced width and depth so that CI stays fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import wan14b_moga_580k
from moga_jax.plan import format_plan, make_plan, parse_mesh

ROOT = Path(__file__).parents[1]


def test_plan_of_the_580k_config_on_a_one_device_mesh():
  cfg = wan14b_moga_580k.get_config()
  plan = make_plan(cfg, {"data": 1, "fsdp": 1, "context": 1, "tensor": 1})
  assert plan["latent_grid"] == (361, 60, 104) and plan["token_grid"] == (361, 30, 52)
  assert plan["tokens"] == 563_160  # the paper's ~580K, within 3%
  assert 14.0e9 < plan["parameters"] < 14.6e9  # Wan 2.1 14B + MoGA routers
  flops = plan["attention_flops_per_sample_forward"]
  assert flops["dense"] == 4.0 * 563_160**2 * 5120 * 40
  assert flops["moga"] == pytest.approx(flops["moga_group"] + flops["moga_window"])
  assert flops["moga_group"] == pytest.approx(flops["dense"] / 16)
  mem = plan["per_device_bytes"]
  assert mem["optimizer_state"] == pytest.approx(2 * mem["params"], rel=1e-3)  # Adam mu, nu
  assert "563,160 tokens" in format_plan(plan)


def test_parse_mesh_errors():
  assert parse_mesh("fsdp=8,context=8") == {"fsdp": 8, "context": 8}
  with pytest.raises(ValueError, match="--mesh must look like fsdp=8,context=8"):
    parse_mesh("fsdp:8")


REDUCED = [
  "--config.model.dim=128", "--config.model.ffn_dim=256", "--config.model.num_layers=2",
  "--config.model.num_heads=8", "--config.model.text_dim=32", "--config.video.frames=17",
  "--config.video.height=128", "--config.video.width=128", "--config.video.shots=2",
  "--config.video.caption_len=8", "--config.train.batch_size=2",
  "--config.model.attention.window_tile=(1,4,4)",
]


@pytest.mark.slow
def test_plan_aot_compiles_the_train_step_on_a_fake_mesh(tmp_path):
  """`python -m moga_jax.plan --aot` on 8 fake devices (fsdp=2 x context=4): the real training
  step lowers and compiles, and each device's arguments are a fraction of the whole state."""
  out = tmp_path / "plan.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run(
      [sys.executable, "-m", "moga_jax.plan", "--config",
       str(ROOT / "configs" / "wan14b_moga_580k.py"), "--mesh", "fsdp=2,context=4", "--aot",
       "--json", str(out), *REDUCED],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  assert "ahead-of-time compile of the training step" in result.stdout
  plan = json.loads(out.read_text())
  assert plan["devices"] == 8 and plan["tokens"] == 5 * 8 * 8
  aot, mem = plan["aot"], plan["per_device_bytes"]
  assert aot["temp_bytes"] > 0
  state = mem["params"] + mem["optimizer_state"]
  assert aot["argument_bytes"] >= state  # this device's shards of state + batch
  whole_state = 3 * plan["parameters"] * 4
  assert state < whole_state / 4  # sharded 8 ways (some small tensors replicated)
