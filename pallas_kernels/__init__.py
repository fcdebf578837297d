"""Attention kernels for MoGA: pure functions on arrays (no Flax, no configs)."""

from pallas_kernels.block_sparse.ops import IMPLEMENTATIONS, resolve_implementation
from pallas_kernels.group_attention import group_attention
from pallas_kernels.metadata import GroupLayout, group_layout, pack_by_group, unpack_by_group

__all__ = [
    "IMPLEMENTATIONS",
    "GroupLayout",
    "group_attention",
    "group_layout",
    "pack_by_group",
    "resolve_implementation",
    "unpack_by_group",
]
