"""The typed run config: one place a ConfigDict becomes frozen, hashable sections, checked by
name; functions take their own section."""

from __future__ import annotations

import pytest

from moga_jax.errors import ConfigError
from moga_jax.parallel import axes
from moga_jax.parallel.sharding import ShardingRules
from moga_jax.train.config_files import load_config_module
from moga_jax.train.run_config import (
  DataConfig,
  DiffusionConfig,
  RunConfig,
  TrainConfig,
  VideoConfig,
  as_run_config,
  as_section,
)


@pytest.mark.parametrize(
  ("name", "pipeline"),
  [("tiny", "tiny"), ("wan1_3b_moga", "wan"), ("wan14b_moga_580k", "wan"), ("wan1_3b", "wan")],
)
def test_every_product_config_types_and_hashes(name, pipeline):
  cfg = load_config_module(name).get_config()
  run = RunConfig.from_config_dict(cfg)
  hash(run)  # static-argument and cache-key ready
  assert run.pipeline == pipeline and (run.video is not None) == (pipeline == "wan")
  assert run.train.batch_size == cfg.train.batch_size
  assert run.sharding.mesh_shape == dict(cfg.sharding.mesh)
  assert isinstance(run.sharding.rules, ShardingRules)
  assert run.model_dict() == cfg.model.to_dict()
  assert as_run_config(run) is run and as_section(run, TrainConfig) is run.train


def test_wan_latent_grid_and_tokens():
  run = RunConfig.from_config_dict(load_config_module("wan1_3b_moga").get_config("stage2"))
  assert run.latent_grid == (120, 60, 104) and run.tokens == 187_200
  assert run.shots == 6 and run.caption_len == 512


@pytest.mark.parametrize(
  ("section", "key", "match"),
  [
    (
      "train",
      "log_evry",
      r"config.train has unknown key\(s\) \['log_evry'\]; known: .*'log_every'",
    ),
    ("data", "heigth", r"config.data has unknown key\(s\) \['heigth'\]"),
    ("sample", "guidanse", r"config.sample has unknown key\(s\) \['guidanse'\]"),
    ("model", "num_head", r"config.model has unknown key\(s\) \['num_head'\]"),
  ],
)
def test_unknown_keys_are_named_with_the_known_ones(section, key, match):
  cfg = load_config_module("tiny").get_config()
  cfg[section][key] = 1
  with pytest.raises(ConfigError, match=match):
    RunConfig.from_config_dict(cfg)


def test_a_missing_knob_is_named_and_values_name_their_field():
  cfg = load_config_module("tiny").get_config()
  del cfg.train["log_every"]  # base.py is its one home: no silent fallback
  with pytest.raises(ConfigError, match=r"config.train is missing \['log_every'\]"):
    RunConfig.from_config_dict(cfg)
  cfg = load_config_module("tiny").get_config()
  cfg.pipeline = "video"
  with pytest.raises(ConfigError, match=r"config.pipeline must be one of \('tiny', 'wan'\)"):
    RunConfig.from_config_dict(cfg)
  cfg = load_config_module("tiny").get_config()
  cfg.train.ema_decay = 1.0
  with pytest.raises(ValueError, match=r"config.train.ema_decay must be in \[0, 1\)"):
    RunConfig.from_config_dict(cfg)
  with pytest.raises(ConfigError, match=r"config.diffusion.caption_dropout must be in \[0, 1\)"):
    DiffusionConfig(shift=3.0, caption_dropout=1.0, balance_weight=0.1)


def test_model_checks_live_in_the_model_config_and_are_named_here():
  cfg = load_config_module("wan1_3b_moga").get_config()
  cfg.model.scan_layers, cfg.model.dense_layers = True, (0,)
  with pytest.raises(ConfigError, match=r"config.model.scan_layers needs identical blocks"):
    RunConfig.from_config_dict(cfg)
  cfg = load_config_module("tiny").get_config()
  cfg.model.attention.window = (3, 1, 1)
  with pytest.raises(ConfigError, match=r"config.model.attention.window and window_tile go"):
    RunConfig.from_config_dict(cfg)
  cfg = load_config_module("tiny").get_config()
  cfg.model.attention.top_k = 5
  with pytest.raises(ConfigError, match=r"config.model.attention.top_k must be in \[1, num_groups"):
    RunConfig.from_config_dict(cfg)


def test_video_section_checks_the_vae_strides():
  fields = load_config_module("wan1_3b_moga").get_config().video.to_dict()
  assert VideoConfig.of(fields).latent_grid == (40, 60, 104)
  with pytest.raises(ConfigError, match=r"config.video.frames = 158: the Wan VAE needs 1 \+ 4k"):
    VideoConfig.of({**fields, "frames": 158})


def test_sections_convert_once_at_a_boundary():
  cfg = load_config_module("tiny").get_config()
  data = as_section(cfg.data, DataConfig)  # a ConfigDict section
  assert data == as_section(cfg, DataConfig) == RunConfig.from_config_dict(cfg).data
  assert data.frames == cfg.data.shots * cfg.data.frames_per_shot


def test_sharding_section_refuses_unknown_logical_axes():
  cfg = load_config_module("tiny").get_config()
  cfg.sharding.rules = (*cfg.sharding.rules, ("activation_time", axes.DATA))
  with pytest.raises(ConfigError, match=r"config.sharding.rules: unknown logical axis"):
    RunConfig.from_config_dict(cfg)
  rules = RunConfig.from_config_dict(load_config_module("tiny").get_config()).sharding.rules
  assert rules.mesh_axes(axes.ACTIVATION_BATCH) == (axes.DATA, axes.FSDP)
  with pytest.raises(ValueError, match="unknown logical axis name 'batch'"):
    rules.mesh_axes("batch")
