"""Typed, frozen model configs: what MoGAAttention and VideoDiT are built from.

Config files are ml_collections (`configs/`), convenient on the command line but untyped:
overridden tuples come back as lists, and a misspelt field is silently a new one. The model
never reads them directly: `DiTConfig.from_model_section(config.model)` is the one place that
turns the `model` section into these dataclasses, converting lists to tuples, refusing unknown
attention fields by name and checking every value, before anything is traced. Both are
hashable, so they can be static arguments and cache keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from moga_jax.model.remat import normalise_remat
from moga_jax.model.rope import axis_dims
from moga_jax.model.routing import BALANCE_LOSSES
from pallas_kernels import KernelOptions
from pallas_kernels.common import check_int

COMBINES = ("mean", "sum")
DENSE_IMPLEMENTATIONS = (None, "xla", "cudnn")  # jax.nn.dot_product_attention's `implementation`


def _tuple(value):
  return tuple(value) if isinstance(value, list | tuple) else value


def head_dim_of(dim: int, num_heads: int) -> int:
  """dim // num_heads; raises ValueError unless num_heads divides dim (the one home of this
  check: DiTConfig, VideoDiT, MoGAAttention and ShotCrossAttention use it)."""
  if dim % num_heads:
    raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim}), the model width")
  return dim // num_heads


def check_blocks(
  dim: int, num_heads: int, num_layers: int, dense_layers, scan_layers: bool, attention
) -> None:
  """The DiT's block layout: heads divide the width, dense_layers index blocks, and scanned
  blocks are identical (no dense blocks among MoGA ones). DiTConfig and VideoDiT check here."""
  head_dim_of(dim, num_heads)
  dense_layers = tuple(dense_layers)
  if any(not 0 <= i < num_layers for i in dense_layers):
    raise ValueError(f"dense_layers {dense_layers} must index blocks 0..{num_layers - 1}")
  if scan_layers and dense_layers and attention is not None:
    raise ValueError(
      f"scan_layers needs identical blocks, but dense_layers {dense_layers} differ from the "
      "MoGA blocks; clear dense_layers to scan"
    )


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """MoGAAttention's branches and kernel settings (the `model.attention` section).

  num_groups: MoGA's groups M (the paper: 5 for Wan, 20 for the minute-long model); None turns
    the MoGA branch off.
  top_k: groups per token (1 in the paper). per_head_router: route each head on its own (an
    extension; the paper shares one routing). balance_loss: "paper" (eq. 8 as printed) or
    "switch".
  stga_windows: (rows, cols) spatial windows per latent frame (2x2 for Wan, 4x4 for the 60-s
    model); None turns STGA off. stga_temporal_group: frames per temporal group (None: a whole
    shot). stga_context_frames: frames of each adjacent group added to STGA's keys.
  frame_attention: the per-frame full-attention branch.
  window, window_tile: an extra sliding 3D window branch (ours, not the paper's; it crosses
    shot cuts), (t, h, w) window in tiles and tile size in tokens; None: off.
  combine: "mean" of the branch outputs (the paper) or their "sum".
  group_tile: tokens per tile of the sorted group layout (None: the op's default).
  qk_norm: RMS-normalise q and k over the inner width (Wan 2.1). rope_theta: 3D RoPE's base.
  implementation, interpret: forwarded to the attention ops (None: best for the backend).
  kernel_options: the kernels' tuning knobs (xla chunk size, Triton warps / stages).
  dense_implementation: how a block with every branch off attends, as
    jax.nn.dot_product_attention's `implementation`: None (XLA's, which holds the N x N
    scores), "xla", or "cudnn" (cuDNN's flash attention: GPU only, bfloat16 / float16).
  """

  num_groups: int | None = 5
  top_k: int = 1
  per_head_router: bool = False
  balance_loss: str = "paper"
  stga_windows: tuple[int, int] | None = (2, 2)
  stga_temporal_group: int | None = None
  stga_context_frames: int = 1
  frame_attention: bool = True
  window: tuple[int, int, int] | None = None
  window_tile: tuple[int, int, int] | None = None
  combine: str = "mean"
  group_tile: int | None = None
  qk_norm: bool = True
  rope_theta: float = 10000.0
  implementation: str | None = None
  interpret: bool | None = None
  kernel_options: KernelOptions = dataclasses.field(default_factory=KernelOptions)
  head_chunk: int | None = None
  dense_implementation: str | None = None

  def __post_init__(self):
    for name in ("stga_windows", "window", "window_tile"):
      object.__setattr__(self, name, _tuple(getattr(self, name)))
    object.__setattr__(self, "kernel_options", KernelOptions.of(self.kernel_options))
    if (self.window is None) != (self.window_tile is None):
      raise ValueError(
        f"window and window_tile go together, got window={self.window!r}, "
        f"window_tile={self.window_tile!r}"
      )
    if self.combine not in COMBINES:
      raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
    if self.balance_loss not in BALANCE_LOSSES:
      raise ValueError(f"balance_loss must be one of {BALANCE_LOSSES}, got {self.balance_loss!r}")
    windows = self.stga_windows
    if windows is not None and (
      len(windows) != 2 or any(not isinstance(s, int) or s < 1 for s in windows)
    ):
      raise ValueError(
        f"stga_windows must be None or two positive ints (rows, cols), got {windows!r}"
      )
    if self.stga_temporal_group is not None:
      check_int("stga_temporal_group", self.stga_temporal_group)
    check_int("stga_context_frames", self.stga_context_frames, minimum=0)
    if self.num_groups is not None:
      check_int("num_groups", self.num_groups)
    check_int("top_k", self.top_k)
    if self.num_groups is not None and self.top_k > self.num_groups:
      raise ValueError(f"top_k must be in [1, num_groups={self.num_groups}], got {self.top_k}")
    for flag in ("per_head_router", "frame_attention", "qk_norm"):
      if not isinstance(getattr(self, flag), bool):
        raise ValueError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
    if self.head_chunk is not None:
      check_int("head_chunk", self.head_chunk)
    if self.dense_implementation not in DENSE_IMPLEMENTATIONS:
      raise ValueError(
        f"dense_implementation must be one of {DENSE_IMPLEMENTATIONS}, got "
        f"{self.dense_implementation!r}"
      )

  @classmethod
  def of(cls, settings: AttentionConfig | Mapping | None) -> AttentionConfig:
    """settings as an AttentionConfig: None gives the defaults (the paper's block with
    M = 5), a mapping (a config section, or keyword arguments) its fields; an unknown field
    raises ValueError naming it."""
    if settings is None:
      return cls()
    if isinstance(settings, cls):
      return settings
    if hasattr(settings, "to_dict"):  # an ml_collections (Frozen)ConfigDict
      settings = settings.to_dict()
    if not isinstance(settings, Mapping):
      raise TypeError(f"attention settings must be a mapping, got {type(settings).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
      raise ValueError(f"unknown attention setting(s) {unknown}; known: {sorted(known)}")
    return cls(**dict(settings))

  def replace(self, **changes) -> AttentionConfig:
    return AttentionConfig.of({**self.as_dict(), **changes})

  def as_dict(self) -> dict[str, Any]:
    """The fields, shallow (kernel_options stays a KernelOptions)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @property
  def dense(self) -> bool:
    """Whether no sparse branch is on: the block is plain dense attention."""
    return (
      self.num_groups is None
      and self.stga_windows is None
      and not self.frame_attention
      and self.window is None
    )


# The fields that turn every branch off: MoGAAttention(dim, heads, **DENSE) is dense attention.
DENSE = {
  "num_groups": None,
  "stga_windows": None,
  "frame_attention": False,
  "window": None,
  "window_tile": None,
}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """VideoDiT's constructor arguments (see its docstring), typed; `attention` None means
  dense blocks."""

  in_channels: int
  out_channels: int
  dim: int
  ffn_dim: int
  num_layers: int
  num_heads: int
  text_dim: int
  patch: tuple[int, int, int] = (1, 2, 2)
  freq_dim: int = 256
  attention: AttentionConfig | None = None
  dense_layers: tuple[int, ...] = ()
  scan_layers: bool = False
  remat: bool | str = False
  ffn_token_chunk: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    object.__setattr__(self, "patch", tuple(self.patch))
    object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
    for name in ("dtype", "param_dtype"):
      object.__setattr__(self, name, jnp.dtype(getattr(self, name)))
    object.__setattr__(self, "remat", normalise_remat(self.remat))
    if self.ffn_token_chunk is not None:
      check_int("ffn_token_chunk", self.ffn_token_chunk)
    if self.attention is not None:
      object.__setattr__(self, "attention", AttentionConfig.of(self.attention))
    check_blocks(
      self.dim, self.num_heads, self.num_layers, self.dense_layers, self.scan_layers, self.attention
    )
    axis_dims(self.dim // self.num_heads)  # 3D RoPE's head_dim

  @classmethod
  def from_model_section(cls, m: Mapping) -> DiTConfig:
    """The one place a config's `model` section becomes the DiT's settings. Latent channels:
    `in_channels` where the config gives them (Wan-VAE latents), else those of the
    space-to-depth stand-in."""
    channels = m["in_channels"] if "in_channels" in m else 3 * m["latent_factor"] ** 2
    attention = AttentionConfig.of(m["attention"])
    return cls(
      in_channels=channels,
      out_channels=channels,
      dim=m["dim"],
      ffn_dim=m["ffn_dim"],
      num_layers=m["num_layers"],
      num_heads=m["num_heads"],
      text_dim=m["text_dim"],
      patch=tuple(m["patch"]),
      freq_dim=m.get("freq_dim", 256),
      # A dense section becomes None (dense blocks), unless it picks the dense kernel.
      attention=None if attention.dense and attention.dense_implementation is None else attention,
      dense_layers=tuple(m["dense_layers"]),
      scan_layers=m["scan_layers"],
      remat=m["remat"],
      ffn_token_chunk=m.get("ffn_token_chunk"),
      dtype=m.get("dtype", "float32"),
      param_dtype=m.get("param_dtype", "float32"),
    )

  def as_dict(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
