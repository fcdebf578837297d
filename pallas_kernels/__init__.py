"""Attention kernels for MoGA: pure functions on arrays (no Flax, no configs).

The attention patterns (group, STGA, per-frame, 3D window) are layouts on one block-sparse
contract: `attend_in_layout` runs any `TileLayout` (a token permutation plus a `BlockMask` of
the key tiles each query tile visits) through the chosen kernel, so a static pattern of your own
needs only its layout. `KernelOptions` holds the kernels' tuning knobs.
"""

from pallas_kernels.block_sparse.ops import (
  IMPLEMENTATIONS,
  attend_in_layout,
  block_sparse_attention,
  resolve_implementation,
)
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.group_attention import group_attention
from pallas_kernels.metadata import (
  BlockMask,
  TileLayout,
  group_layout,
  pack_tiles,
  unpack_tiles,
  window_layout,
)
from pallas_kernels.shot_window_attention import frame_attention, shot_window_attention
from pallas_kernels.window_attention import window_attention

__all__ = [
  "IMPLEMENTATIONS",
  "BlockMask",
  "KernelOptions",
  "TileLayout",
  "attend_in_layout",
  "block_sparse_attention",
  "frame_attention",
  "group_attention",
  "group_layout",
  "pack_tiles",
  "resolve_implementation",
  "shot_window_attention",
  "unpack_tiles",
  "window_attention",
  "window_layout",
]
