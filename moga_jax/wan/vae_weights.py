"""diffusers `AutoencoderKLWan` safetensors (e.g. Wan 2.1's `vae/` folder) into WanVAE.

Our module tree keeps diffusers' names except where its containers differ: `resample.1` (the
conv after a padding or upsampling layer in an nn.Sequential) is `conv`, the single
`upsamplers.0` is `upsampler`, and the mid block's single `attentions.0` is `attention`. Conv
weights become channels-last kernels; the RMS norms' broadcastable gammas ([C, 1, 1(, 1)])
become [C].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from moga_jax.wan.vae import WanVAE
from moga_jax.wan.vae_config import WanVAEConfig
from moga_jax.wan.weights import (
  Transform,
  WeightReport,
  config_beside,
  conv_kernel,
  identity,
  load_tensors,
  read_safetensors,
)

_TOP_LEVEL = ("encoder", "decoder", "quant_conv", "post_quant_conv")
_CONTAINERS = (
  (".resample.1.", ".conv."),
  (".upsamplers.0.", ".upsampler."),
  (".attentions.0.", ".attention."),
)


def _gamma(x: np.ndarray) -> np.ndarray:
  """[C, 1, 1(, 1)] -> [C]; any other shape is left as is, to be reported as mis-shaped."""
  return x.reshape(x.shape[:1]) if x.ndim >= 1 and x.size == x.shape[0] else x


_LEAVES: dict[str, tuple[str, Transform]] = {
  "weight": ("kernel", conv_kernel),
  "bias": ("bias", identity),
  "gamma": ("gamma", _gamma),
}


def wan_vae_rename(name: str) -> tuple[tuple[str | int, ...], Transform] | None:
  """diffusers AutoencoderKLWan tensor name -> (WanVAE parameter path, transform)."""
  if "." not in name or name.split(".", 1)[0] not in _TOP_LEVEL:
    return None
  stem, leaf = name.rsplit(".", 1)
  if leaf not in _LEAVES:
    return None
  stem = f".{stem}."
  for old, new in _CONTAINERS:
    stem = stem.replace(old, new)
  ours, transform = _LEAVES[leaf]
  path = tuple(int(p) if p.isdigit() else p for p in stem.strip(".").split("."))
  return (*path, ours), transform


def load_wan_vae(
  src: str | os.PathLike,
  config: WanVAEConfig | None = None,
  *,
  dtype: Any = jnp.float32,
  param_dtype: Any = jnp.float32,
  precision: Any = None,
) -> tuple[WanVAE, WeightReport]:
  """Reads a .safetensors file or a folder of shards (diffusers' `vae/`) into a new WanVAE.

  config defaults to the config.json next to the weights. Raises, naming the tensors, when
  anything is missing, unexpected or mis-shaped; the report lists what was loaded.
  """
  src = Path(src)
  if config is None:
    config = WanVAEConfig.from_json(config_beside(src))
  vae = nnx.eval_shape(
    lambda: WanVAE(
      config, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=nnx.Rngs(0)
    )
  )
  report = load_tensors(vae, read_safetensors(src), wan_vae_rename)
  report.raise_if_incomplete(f"Wan VAE from {src}")
  return vae, report
