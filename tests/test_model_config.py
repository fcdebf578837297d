"""Typed model configs: a config file's model section becomes frozen, checked dataclasses in one
place, and the module reads nothing else."""

from __future__ import annotations

import pytest
from flax import nnx

from moga_jax import DENSE, AttentionConfig, DiTConfig, MoGAAttention, VideoDiT
from moga_jax.train.config_files import load_config_module
from pallas_kernels import KernelOptions


@pytest.mark.parametrize("name", ["tiny", "wan1_3b_moga", "wan14b_moga_580k", "wan1_3b"])
def test_every_config_file_gives_a_typed_hashable_dit_config(name):
  m = load_config_module(name).get_config().model
  config = DiTConfig.from_model_section(m)
  hash(config)  # static-argument and cache-key ready
  assert config.dim == m.dim and config.patch == tuple(m.patch)
  if config.attention is None:  # configs/wan1_3b.py: the unmodified, dense Wan
    assert AttentionConfig.of(m.attention.to_dict()).dense
  else:
    assert config.attention.num_groups == m.attention.num_groups
    assert isinstance(config.attention.kernel_options, KernelOptions)


def test_overridden_tuples_come_back_as_tuples_and_unknown_settings_are_named():
  m = load_config_module("tiny").get_config().model
  m.attention.stga_windows = [4, 4]  # what ml_collections holds after a command-line override
  assert DiTConfig.from_model_section(m).attention.stga_windows == (4, 4)
  m.attention.num_group = 3  # a misspelling is a new field to ml_collections
  with pytest.raises(ValueError, match=r"unknown attention setting\(s\) \['num_group'\]"):
    DiTConfig.from_model_section(m)


@pytest.mark.parametrize(
  ("settings", "needle"),
  [
    ({"combine": "max"}, "combine must be one of"),
    ({"balance_loss": "l2"}, "balance_loss must be one of"),
    ({"stga_windows": (2, 0)}, "stga_windows must be None or two positive ints"),
    ({"window": (3, 3, 3)}, "window and window_tile go together"),
    ({"kernel_options": {"num_warps": 3}}, "power of two"),
    ({"num_groups": 0}, "num_groups"),
  ],
)
def test_bad_settings_fail_when_the_config_is_made(settings, needle):
  with pytest.raises((ValueError, TypeError), match=needle):
    AttentionConfig.of(settings)


def test_module_takes_a_config_and_keyword_overrides():
  base = AttentionConfig(num_groups=7, stga_windows=(4, 4))
  attn = MoGAAttention(32, 4, config=base, frame_attention=False, rngs=nnx.Rngs(0))
  assert attn.config == base.replace(frame_attention=False)
  assert attn.branches == ("moga", "stga") and attn.router.num_groups == 7
  assert MoGAAttention(32, 4, **DENSE, rngs=nnx.Rngs(0)).branches == ()
  with pytest.raises(ValueError, match="num_groupz"):
    MoGAAttention(32, 4, num_groupz=3, rngs=nnx.Rngs(0))
  dit = VideoDiT.from_config(
    DiTConfig(
      in_channels=4,
      out_channels=4,
      dim=32,
      ffn_dim=64,
      num_layers=2,
      num_heads=4,
      text_dim=8,
      attention=base,
      dense_layers=(0,),
    ),
    rngs=nnx.Rngs(0),
  )
  assert dit.moga_layers == (1,) and dit.blocks[0].self_attn.branches == ()
  assert dit.blocks[1].self_attn.config == base


def test_dense_blocks_keep_the_sections_norm_and_rope_and_configdicts_are_accepted():
  from ml_collections import ConfigDict

  args = dict(in_channels=4, out_channels=4, dim=32, ffn_dim=64, num_layers=2, num_heads=4)
  section = ConfigDict(dict(num_groups=3, qk_norm=False, rope_theta=500.0))
  dit = VideoDiT(**args, text_dim=8, attention=section, dense_layers=(0,), rngs=nnx.Rngs(0))
  dense, routed = dit.blocks[0].self_attn, dit.blocks[1].self_attn
  assert dense.branches == () and routed.branches == ("moga", "stga", "frame")
  assert dense.norm_q is None and dense.rope_theta == 500.0  # not the defaults
  everything_dense = VideoDiT(**args, text_dim=8, attention=None, rngs=nnx.Rngs(0))
  assert all(b.self_attn.branches == () for b in everything_dense.blocks)
  assert everything_dense.moga_layers == ()
