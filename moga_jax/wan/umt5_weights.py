"""transformers `UMT5EncoderModel` safetensors (e.g. Wan's `text_encoder/`) into UMT5Encoder.

The module is built abstractly (no random init of ~5.7B parameters) and filled from the
memory-mapped tensors; anything missing, unexpected or mis-shaped raises, naming the tensor.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from moga_jax.errors import InputError
from moga_jax.wan.umt5 import UMT5Config, UMT5Encoder
from moga_jax.wan.weights import (
  Transform,
  WeightReport,
  config_beside,
  identity,
  linear_kernel,
  load_tensors,
  read_safetensors,
)

# transformers ties the encoder's token embedding to `shared`; checkpoints hold either or both.
_EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight")

_BLOCK = re.compile(r"encoder\.block\.(\d+)\.layer\.(\d)\.(.+)\.weight")

# (sub-layer index, reference name) -> our path below layers.<i>
_BLOCK_PARAMS: dict[tuple[str, str], tuple[tuple[str, ...], Transform]] = {
  ("0", "layer_norm"): (("attn_norm", "scale"), identity),
  ("0", "SelfAttention.q"): (("attn", "q", "kernel"), linear_kernel),
  ("0", "SelfAttention.k"): (("attn", "k", "kernel"), linear_kernel),
  ("0", "SelfAttention.v"): (("attn", "v", "kernel"), linear_kernel),
  ("0", "SelfAttention.o"): (("attn", "o", "kernel"), linear_kernel),
  ("0", "SelfAttention.relative_attention_bias"): (("attn", "rel_bias", "embedding"), identity),
  ("1", "layer_norm"): (("ffn_norm", "scale"), identity),
  ("1", "DenseReluDense.wi_0"): (("ffn", "wi_0", "kernel"), linear_kernel),
  ("1", "DenseReluDense.wi_1"): (("ffn", "wi_1", "kernel"), linear_kernel),
  ("1", "DenseReluDense.wo"): (("ffn", "wo", "kernel"), linear_kernel),
}


def umt5_rename(name: str) -> tuple[tuple[str | int, ...], Transform] | None:
  """transformers UMT5EncoderModel tensor name -> (UMT5Encoder parameter path, transform)."""
  if name in _EMBEDDING_NAMES:
    return ("embed", "embedding"), identity
  if name == "encoder.final_layer_norm.weight":
    return ("final_norm", "scale"), identity
  match = _BLOCK.fullmatch(name)
  if match is None:
    return None
  index, sub, rest = match.groups()
  target = _BLOCK_PARAMS.get((sub, rest))
  if target is None:
    return None
  path, transform = target
  return ("layers", int(index), *path), transform


def _one_embedding(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Keeps `shared.weight` when a checkpoint also stores its tied copy under the encoder."""
  present = [n for n in _EMBEDDING_NAMES if n in tensors]
  if len(present) < 2:
    return tensors
  a, b = (tensors[n] for n in present)
  if a.shape != b.shape:
    raise InputError(
      f"tied embeddings disagree in shape: {present[0]} {a.shape}, {present[1]} {b.shape}"
    )
  return {k: v for k, v in tensors.items() if k != present[1]}


def load_umt5(
  src: str | os.PathLike,
  config: UMT5Config | None = None,
  *,
  dtype: Any = jnp.float32,
  param_dtype: Any = jnp.float32,
) -> tuple[UMT5Encoder, WeightReport]:
  """Reads a .safetensors file or a folder of shards into a new UMT5Encoder.

  config defaults to the config.json next to the weights. Raises, naming the tensors, when
  anything is missing, unexpected or mis-shaped; the report lists what was loaded.
  """
  src = Path(src)
  if config is None:
    config = UMT5Config.from_json(config_beside(src))
  encoder = nnx.eval_shape(
    lambda: UMT5Encoder(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
  )
  report = load_tensors(encoder, _one_embedding(read_safetensors(src)), umt5_rename)
  report.raise_if_incomplete(f"umT5 encoder from {src}")
  return encoder, report
