"""Wan 2.1 T2V 1.3B as released: dense self-attention in every block, no MoGA routers.

A converted Wan2.1-T2V-1.3B checkpoint sampled with this config computes what the original model
computes (full attention over all tokens; parity against diffusers in tests/test_wan_pipeline.py):

  python -m moga_jax.wan.convert --src Wan2.1-T2V-1.3B-Diffusers --out weights/wan1_3b \
      --config configs/wan1_3b.py
  python sample.py --config configs/wan1_3b.py --weights weights/wan1_3b \
      --prompt "a red fox runs through snow"

Everything but the attention is configs/wan1_3b_moga.py's (same stages, video sizes, sampler).
Sampling the MoGA config straight after conversion is a different model: its routers are
untrained (random groups) and its blocks average MoGA, STGA and per-frame attention, which the
dense Wan weights never saw, so it needs the fine-tuning of configs/wan1_3b_moga.py first.
"""

from ml_collections import ConfigDict

from moga_jax.train.config_files import load_config_module

wan1_3b_moga = load_config_module("wan1_3b_moga")


def get_config(stage: str = "stage1") -> ConfigDict:
  c = wan1_3b_moga.get_config(stage)
  a = c.model.attention
  a.num_groups = None  # no MoGA branch, no routers
  a.stga_windows = None  # no STGA branch
  a.frame_attention = False  # no per-frame branch: the block is full attention
  c.diffusion.balance_weight = 0.0  # nothing to balance
  return c
