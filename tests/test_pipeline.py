"""config.pipeline picks the product once (moga_jax.train.pipeline); user errors are UserErrors."""

from __future__ import annotations

import pytest
from ml_collections import ConfigDict

from moga_jax.errors import ConfigError, InputError, MissingInputError, UserError
from moga_jax.train import checkpoint, run_guard
from moga_jax.train.config_files import load_config_module
from moga_jax.train.pipeline import TinyPipeline, WanPipeline, pipeline_for
from moga_jax.train.run_config import pipeline_name


def test_the_configs_name_their_pipeline():
  assert isinstance(pipeline_for(load_config_module("tiny").get_config()), TinyPipeline)
  assert isinstance(pipeline_for(load_config_module("wan1_3b_moga").get_config()), WanPipeline)
  assert isinstance(pipeline_for(load_config_module("wan1_3b").get_config()), WanPipeline)


def test_a_config_without_the_field_is_tiny_unless_it_has_a_video_section():
  assert pipeline_name(ConfigDict({"model": {}, "data": {}})) == "tiny"
  with pytest.raises(ConfigError, match="`video` section but no `pipeline` field"):
    pipeline_name(ConfigDict({"model": {}, "video": {}}))


def test_an_unknown_pipeline_names_the_valid_ones():
  with pytest.raises(ConfigError, match=r"must be one of \('tiny', 'wan'\), got 'sdxl'"):
    pipeline_for(ConfigDict({"pipeline": "sdxl"}))


def test_converted_weights_need_the_wan_pipeline():
  cfg = load_config_module("tiny").get_config()
  with pytest.raises(ConfigError, match=r"need config\.pipeline = 'wan'"):
    TinyPipeline().configure(cfg, "weights/wan1_3b_moga")
  with pytest.raises(ConfigError, match="pass --init DIR"):
    WanPipeline().prepare_data(load_config_module("wan1_3b_moga").get_config(), None, None)
  with pytest.raises(InputError, match="give --workdir"):
    TinyPipeline().sample(cfg, ["a cat"], seed=0)


def test_user_errors_are_the_user_error_types():
  """cli_main prints UserErrors as one line; a bare ValueError or OSError is a bug."""
  assert run_guard.USER_ERRORS == (UserError,)
  for error in (checkpoint.ConfigMismatchError, checkpoint.UnreadableCheckpointError):
    assert issubclass(error, UserError)
  assert issubclass(MissingInputError, FileNotFoundError) and issubclass(ConfigError, ValueError)
  assert not issubclass(ValueError, run_guard.USER_ERRORS)
