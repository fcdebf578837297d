"""Attention kernels for MoGA: pure functions on arrays (no Flax, no configs)."""

from pallas_kernels.block_sparse.ops import IMPLEMENTATIONS, resolve_implementation
from pallas_kernels.group_attention import group_attention
from pallas_kernels.metadata import TileLayout, group_layout, pack_tiles, unpack_tiles
from pallas_kernels.shot_window_attention import frame_attention, shot_window_attention
from pallas_kernels.window_attention import window_attention

__all__ = [
  "IMPLEMENTATIONS",
  "TileLayout",
  "frame_attention",
  "group_attention",
  "group_layout",
  "pack_tiles",
  "resolve_implementation",
  "shot_window_attention",
  "unpack_tiles",
  "window_attention",
]
