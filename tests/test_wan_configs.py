"""The converters' config.json readers share one unknown-key policy (`known_config_keys`):
metadata and the exporting library's own settings pass, anything else unknown is refused."""

from __future__ import annotations

import json

import pytest

from moga_jax.wan.dit_weights import dit_kwargs_from_diffusers
from moga_jax.wan.umt5 import UMT5Config
from moga_jax.wan.vae_config import WanVAEConfig

# google/umt5-xxl's config.json as transformers writes it (what Wan 2.1's encoder ships with).
UMT5_XXL = {
  "_name_or_path": "google/umt5-xxl",
  "architectures": ["UMT5EncoderModel"],
  "classifier_dropout": 0.0,
  "d_ff": 10240,
  "d_kv": 64,
  "d_model": 4096,
  "decoder_start_token_id": 0,
  "dense_act_fn": "gelu_new",
  "dropout_rate": 0.1,
  "eos_token_id": 1,
  "feed_forward_proj": "gated-gelu",
  "initializer_factor": 1.0,
  "is_encoder_decoder": True,
  "is_gated_act": True,
  "layer_norm_epsilon": 1e-06,
  "model_type": "umt5",
  "num_decoder_layers": 24,
  "num_heads": 64,
  "num_layers": 24,
  "output_past": True,
  "pad_token_id": 0,
  "relative_attention_max_distance": 128,
  "relative_attention_num_buckets": 32,
  "scalable_attention": True,
  "tie_word_embeddings": False,
  "tokenizer_class": "T5Tokenizer",
  "torch_dtype": "float32",
  "transformers_version": "4.46.0",
  "use_cache": True,
  "vocab_size": 256384,
}


def _write(tmp_path, raw) -> str:
  (tmp_path / "config.json").write_text(json.dumps(raw))
  return str(tmp_path)


def test_umt5_reads_the_xxl_config_and_ignores_transformers_settings(tmp_path):
  config = UMT5Config.from_json(_write(tmp_path, UMT5_XXL))
  assert config == UMT5Config()  # the defaults are umt5-xxl's
  small = UMT5Config.from_json(_write(tmp_path, UMT5_XXL | {"d_model": 512, "num_heads": 6}))
  assert (small.d_model, small.num_heads, small.num_layers) == (512, 6, 24)


@pytest.mark.parametrize(
  ("change", "needle"),
  [
    ({"dense_act_fn": "relu"}, "dense_act_fn='relu'.*gated-gelu"),
    ({"is_gated_act": False}, "is_gated_act=False"),
    ({"model_type": "t5"}, "model_type is 't5'"),
    ({"is_decoder": True}, "is_decoder is true"),
  ],
)
def test_umt5_refuses_what_would_change_the_encoder(tmp_path, change, needle):
  path = _write(tmp_path, UMT5_XXL | change)
  with pytest.raises(ValueError, match=needle) as info:
    UMT5Config.from_json(path)
  assert "config.json" in str(info.value)


def test_umt5_names_the_keys_it_ignores(tmp_path, monkeypatch):
  """transformers' configs gain generic and decoder keys from release to release: an unknown
  one is named in a warning, not refused (the keys that could change the encoder are checked)."""
  from absl import logging as absl_logging

  seen = []
  monkeypatch.setattr(absl_logging, "warning", lambda msg, *args: seen.append(msg % args))
  config = UMT5Config.from_json(_write(tmp_path, UMT5_XXL | {"some_new_setting": 1}))
  assert config == UMT5Config()
  assert len(seen) == 1 and "['some_new_setting']" in seen[0]
  UMT5Config.from_json(_write(tmp_path, UMT5_XXL))
  assert len(seen) == 1  # the keys it knows to be harmless pass silently


def test_vae_and_dit_refuse_unknown_keys_by_name(tmp_path):
  raw = {"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.35.0", "base_dim": 96}
  assert WanVAEConfig.from_json(_write(tmp_path, raw)).base_dim == 96
  with pytest.raises(ValueError, match=r"unsupported config keys \['clip_output'\]"):
    WanVAEConfig.from_json(_write(tmp_path, raw | {"clip_output": True}))
  assert dit_kwargs_from_diffusers({"_diffusers_version": "0.35.0", "num_layers": 2})["num_layers"]
  with pytest.raises(ValueError, match=r"WanTransformer3DModel config.*\['rope_scale'\]"):
    dit_kwargs_from_diffusers({"num_layers": 2, "rope_scale": 2.0})
