"""The umT5 text encoder Wan 2.1 conditions on (transformers' `UMT5EncoderModel`), in NNX.

How umT5 differs from a textbook transformer, all of which matters for matching it:
  * every layer owns a relative position bias table (T5 shares the first layer's);
  * attention logits are not scaled by 1/sqrt(d_kv) (the scale is folded into the weights);
  * the norm is T5's RMS norm: no mean subtraction, no bias, epsilon inside the root;
  * the feed-forward block is gated GELU with the tanh approximation ("gelu_new").

The residual stream, norms and softmax stay in float32; `dtype` only sets the matmul inputs, so
bfloat16 compute (as Wan runs the encoder) costs precision in the projections alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moga_jax.errors import InputError
from moga_jax.wan.weights import known_config_keys, read_config_json

_SUPPORTED_FFN = "gated-gelu"
# What transformers derives from feed_forward_proj="gated-gelu" (and writes beside it).
_IMPLIED_BY_GATED_GELU = {"dense_act_fn": "gelu_new", "is_gated_act": True}
# Keys of a transformers umT5 config.json that do not change the encoder's output: the
# decoder, generation and tokenizer settings, dropout, initialisation, output switches, saving
# metadata (google/umt5-xxl's config.json and transformers 5.24's writing).
_TRANSFORMERS_ONLY = frozenset(
  {
    "architectures",
    "bos_token_id",
    "chunk_size_feed_forward",
    "classifier_dropout",
    "id2label",
    "label2id",
    "output_attentions",
    "output_hidden_states",
    "problem_type",
    "return_dict",
    "scale_decoder_outputs",
    "decoder_start_token_id",
    "dropout_rate",
    "dtype",
    "eos_token_id",
    "initializer_factor",
    "is_decoder",
    "is_encoder_decoder",
    "model_type",
    "num_decoder_layers",
    "output_past",
    "pad_token_id",
    "scalable_attention",  # written by the T5X export; transformers never reads it
    "tie_word_embeddings",
    "tokenizer_class",
    "torch_dtype",
    "transformers_version",
    "use_cache",
    *_IMPLIED_BY_GATED_GELU,
  }
)


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  """transformers' field names. Defaults are google/umt5-xxl, the encoder Wan 2.1 ships."""

  vocab_size: int = 256384
  d_model: int = 4096
  d_kv: int = 64
  d_ff: int = 10240
  num_layers: int = 24
  num_heads: int = 64
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward_proj: str = _SUPPORTED_FFN
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    if self.feed_forward_proj != _SUPPORTED_FFN:
      raise InputError(
        f"feed_forward_proj={self.feed_forward_proj!r} is not supported: this "
        f"umT5 port implements {_SUPPORTED_FFN!r} only (what umT5 checkpoints use)"
      )
    if self.relative_attention_num_buckets < 4:
      raise InputError(
        "relative_attention_num_buckets must be at least 4 (half per direction, "
        "half of those exact)"
      )

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> UMT5Config:
    """Reads a transformers config.json (a file, or the folder holding one). The settings that
    could change the encoder are checked; transformers' own settings are ignored, silently
    when known (_TRANSFORMERS_ONLY), else named in a warning (`known_config_keys`)."""
    path, raw = read_config_json(path)
    if raw.get("model_type", "umt5") != "umt5":
      raise InputError(
        f"{path}: model_type is {raw['model_type']!r}, expected 'umt5' (plain T5 "
        "shares one position bias across layers and is not supported here)"
      )
    if raw.get("is_decoder", False):
      raise InputError(f"{path}: is_decoder is true; only the umT5 encoder is supported")
    for key, value in _IMPLIED_BY_GATED_GELU.items():
      if raw.get(key, value) != value:
        raise InputError(
          f"{path}: {key}={raw[key]!r}, but this umT5 port computes {_SUPPORTED_FFN!r}, "
          f"which means {key}={value!r}"
        )
    names = (f.name for f in dataclasses.fields(cls))
    known = known_config_keys(raw, names, where=path, ignore=_TRANSFORMERS_ONLY, unknown="warn")
    return cls(**known)


def relative_position_buckets(
  offsets: np.ndarray, num_buckets: int, max_distance: int
) -> np.ndarray:
  """Bidirectional T5 bucket of each offset (key position - query position), as int32.

  Half the buckets are for positive offsets. In each half, offsets below half of it get a bucket
  each; larger ones share log-spaced buckets up to max_distance, beyond which all share the last.
  Computed with numpy in float32, operation for operation as transformers does, because the log
  lands exactly on bucket edges (e.g. offset 16 -> 2.0) and a 1-ulp error would move it.
  """
  offsets = np.asarray(offsets, np.int64)
  half = num_buckets // 2
  exact = half // 2
  sign_bucket = np.where(offsets > 0, half, 0)
  distance = np.abs(offsets)
  ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(exact)
  log_ratio = np.log(ratio) / np.float32(math.log(max_distance / exact))
  large = exact + (log_ratio * np.float32(half - exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  return (sign_bucket + np.where(distance < exact, distance, large)).astype(np.int32)


class T5LayerNorm(nnx.Module):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale, statistics in float32."""

  def __init__(self, dim: int, eps: float, *, dtype: Any, param_dtype: Any):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def _linear(din: int, dout: int, dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class SelfAttention(nnx.Module):
  def __init__(self, config: UMT5Config, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    inner = config.num_heads * config.d_kv
    self.num_heads, self.d_kv = config.num_heads, config.d_kv
    self.q = _linear(config.d_model, inner, dtype, param_dtype, rngs)
    self.k = _linear(config.d_model, inner, dtype, param_dtype, rngs)
    self.v = _linear(config.d_model, inner, dtype, param_dtype, rngs)
    self.o = _linear(inner, config.d_model, dtype, param_dtype, rngs)
    self.rel_bias = nnx.Embed(
      config.relative_attention_num_buckets, config.num_heads, param_dtype=param_dtype, rngs=rngs
    )

  def __call__(self, x: jax.Array, buckets: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, L, D]; buckets int [L, L]; mask bool [B, L] (False keys are never attended)."""
    b, length, _ = x.shape
    split = lambda t: t.reshape(b, length, self.num_heads, self.d_kv)
    q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    bias = jnp.transpose(self.rel_bias.embedding[...][buckets], (2, 0, 1)).astype(jnp.float32)
    logits = jnp.where(mask[:, None, None, :], logits + bias, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, -1)
    return self.o(out)


class GatedGeluFFN(nnx.Module):
  def __init__(self, config: UMT5Config, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    self.wi_0 = _linear(config.d_model, config.d_ff, dtype, param_dtype, rngs)
    self.wi_1 = _linear(config.d_model, config.d_ff, dtype, param_dtype, rngs)
    self.wo = _linear(config.d_ff, config.d_model, dtype, param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.wo(jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x))


class Block(nnx.Module):
  def __init__(self, config: UMT5Config, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    eps = config.layer_norm_epsilon
    self.attn_norm = T5LayerNorm(config.d_model, eps, dtype=dtype, param_dtype=param_dtype)
    self.attn = SelfAttention(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ffn_norm = T5LayerNorm(config.d_model, eps, dtype=dtype, param_dtype=param_dtype)
    self.ffn = GatedGeluFFN(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, buckets: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.attn_norm(x), buckets, mask).astype(jnp.float32)
    return x + self.ffn(self.ffn_norm(x)).astype(jnp.float32)


class UMT5Encoder(nnx.Module):
  """ids int [B, L], mask bool [B, L] -> last hidden states float32 [B, L, d_model]."""

  def __init__(
    self,
    config: UMT5Config,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.d_model, param_dtype=param_dtype, rngs=rngs)
    self.layers = nnx.List(
      [
        Block(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for _ in range(config.num_layers)
      ]
    )
    self.final_norm = T5LayerNorm(
      config.d_model, config.layer_norm_epsilon, dtype=jnp.float32, param_dtype=param_dtype
    )

  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    length = ids.shape[1]
    # Buckets depend on the offset only: a [2L-1] table, spread to [L, L] by index arithmetic.
    table = relative_position_buckets(
      np.arange(-(length - 1), length),
      self.config.relative_attention_num_buckets,
      self.config.relative_attention_max_distance,
    )
    pos = jnp.arange(length)
    buckets = jnp.asarray(table)[pos[None, :] - pos[:, None] + length - 1]
    mask = mask.astype(bool)
    x = self.embed(ids.astype(jnp.int32)).astype(jnp.float32)
    for layer in self.layers:
      x = layer(x, buckets, mask)
    return self.final_norm(x)


def prompt_embeddings(encoder: UMT5Encoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """Encoder output with every padded position set to zero, as Wan's pipeline hands it on.

  diffusers keeps the first sum(mask) rows of each prompt and zero-fills the rest; with right
  padding (the only kind `encode_prompts` makes) that is zeroing wherever mask is False.
  """
  hidden = encoder(ids, mask)
  return jnp.where(mask.astype(bool)[..., None], hidden, jnp.zeros((), hidden.dtype))
