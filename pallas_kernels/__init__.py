"""Attention kernels for MoGA: pure functions on arrays (no Flax, no configs)."""

from pallas_kernels.block_sparse.ops import IMPLEMENTATIONS, resolve_implementation
from pallas_kernels.group_attention import group_attention
from pallas_kernels.metadata import TileLayout, group_layout, pack_tiles, unpack_tiles
from pallas_kernels.window_attention import window_attention

__all__ = [
    "IMPLEMENTATIONS",
    "TileLayout",
    "group_attention",
    "group_layout",
    "pack_tiles",
    "resolve_implementation",
    "unpack_tiles",
    "window_attention",
]
