"""The Wan 2.1 VAE's configuration: diffusers' `AutoencoderKLWan` config fields, checked.

Only the Wan 2.1 architecture is implemented. Wan 2.2's VAE (residual down/up blocks,
patchified 12-channel input) shares the class and the config file in diffusers, so its fields are
recognised here in order to refuse them by name rather than load something that computes
different numbers.
"""

from __future__ import annotations

import dataclasses
import os

from moga_jax.errors import InputError
from moga_jax.wan.weights import known_config_keys, read_config_json

# Wan 2.1's published per-channel latent statistics (diffusers' defaults).
WAN21_LATENTS_MEAN = (
  -0.7571,
  -0.7089,
  -0.9113,
  0.1075,
  -0.1745,
  0.9653,
  -0.1517,
  1.5508,
  0.4134,
  -0.0715,
  0.5517,
  -0.3632,
  -0.1922,
  -0.9497,
  0.2503,
  -0.2921,
)
WAN21_LATENTS_STD = (
  2.8184,
  1.4541,
  2.3275,
  2.6558,
  1.2196,
  1.7708,
  2.6052,
  2.0743,
  3.2687,
  2.1526,
  2.8652,
  1.5579,
  1.6382,
  1.1253,
  2.8251,
  1.9160,
)

# The encoder reads frame 0 alone, then chunks of this many frames (hard-coded in diffusers).
ENCODE_CHUNK = 4

_CLASS_NAME = "AutoencoderKLWan"


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
  """diffusers' field names (including its spelling `temperal`); defaults are Wan 2.1's VAE."""

  base_dim: int = 96
  decoder_base_dim: int | None = None
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_scales: tuple[float, ...] = ()
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  dropout: float = 0.0
  latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
  latents_std: tuple[float, ...] = WAN21_LATENTS_STD
  # Wan 2.2 fields: accepted only at their Wan 2.1 values.
  is_residual: bool = False
  in_channels: int = 3
  out_channels: int = 3
  patch_size: int | None = None
  # Informational in diffusers (they size its spatial tiles); the architecture decides here.
  scale_factor_temporal: int | None = 4
  scale_factor_spatial: int | None = 8

  def __post_init__(self):
    for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    wan22 = []
    if self.is_residual:
      wan22.append("is_residual=True")
    if self.patch_size is not None:
      wan22.append(f"patch_size={self.patch_size}")
    if self.in_channels != 3:
      wan22.append(f"in_channels={self.in_channels}")
    if self.out_channels != 3:
      wan22.append(f"out_channels={self.out_channels}")
    if wan22:
      raise InputError(
        f"unsupported VAE config ({', '.join(wan22)}): this is the Wan 2.2 VAE "
        "(residual blocks, patchified input) or a non-RGB variant; only the Wan "
        "2.1 VAE (is_residual=False, patch_size=None, 3 channels in and out) is "
        "implemented"
      )
    if self.dropout != 0:
      raise InputError(
        f"dropout={self.dropout}: only dropout=0 is supported (this port is "
        "inference-only and has no dropout layers)"
      )
    if self.attn_scales:
      raise InputError(
        f"attn_scales={list(self.attn_scales)}: attention inside the encoder's "
        "down blocks is not supported (diffusers' AutoencoderKLWan cannot run it "
        "either); Wan 2.1 uses attn_scales=[]"
      )
    if len(self.dim_mult) < 1 or min(self.dim_mult) < 1 or self.base_dim < 1:
      raise InputError(
        f"base_dim={self.base_dim}, dim_mult={list(self.dim_mult)}: need positive widths"
      )
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise InputError(
        f"temperal_downsample has {len(self.temperal_downsample)} entries; "
        f"dim_mult={list(self.dim_mult)} needs one per downsampling stage "
        f"({len(self.dim_mult) - 1})"
      )
    if ENCODE_CHUNK % self.temporal_factor:
      raise InputError(
        f"{sum(self.temperal_downsample)} temporal downsamplings compress "
        f"{self.temporal_factor}x, which does not divide the encoder's "
        f"{ENCODE_CHUNK}-frame chunks"
      )
    for name in ("latents_mean", "latents_std"):
      if len(getattr(self, name)) != self.z_dim:
        raise InputError(f"{name} has {len(getattr(self, name))} entries, z_dim={self.z_dim}")
    if min(self.latents_std) <= 0:
      raise InputError("latents_std must be positive")

  @property
  def decoder_dim(self) -> int:
    return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

  @property
  def temporal_factor(self) -> int:
    """Frames per latent frame, after the first frame (which has a latent frame of its own)."""
    return 2 ** sum(bool(t) for t in self.temperal_downsample)

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> WanVAEConfig:
    """Reads a diffusers config.json (a file, or the folder holding one); an unknown key
    raises (`known_config_keys`: every converter's one policy)."""
    path, raw = read_config_json(path)
    class_name = raw.get("_class_name", _CLASS_NAME)
    if class_name != _CLASS_NAME:
      raise InputError(f"{path}: _class_name is {class_name!r}, expected {_CLASS_NAME!r}")
    fields = known_config_keys(raw, (f.name for f in dataclasses.fields(cls)), where=path)
    try:
      return cls(**fields)
    except ValueError as e:
      raise InputError(f"{path}: {e}") from e
