"""Attention kernels for MoGA: pure functions on arrays (no Flax, no configs).

The attention patterns (group, STGA, per-frame, 3D window) are layouts on one block-sparse
contract: `attend_in_layout` runs any `TileLayout` (a token permutation plus a `BlockMask` of
the key tiles each query tile visits) through the chosen kernel, so a static pattern of your own
needs only its layout. `KernelOptions` holds the kernels' tuning knobs.

The public names load on first use (PEP 562), so `import pallas_kernels` and the light modules
(`pallas_kernels.common`: cdiv and argument checks) load no kernel; the TPU and GPU kernels
load only when one runs.
"""

import importlib
import sys
import types

# Public name -> the module that defines it.
_EXPORTS = {
  "IMPLEMENTATIONS": "pallas_kernels.block_sparse.dispatch",
  "resolve_implementation": "pallas_kernels.block_sparse.dispatch",
  "attend_in_layout": "pallas_kernels.block_sparse.layout_ops",
  "block_sparse_attention": "pallas_kernels.block_sparse.layout_ops",
  "KernelOptions": "pallas_kernels.block_sparse.options",
  "group_attention": "pallas_kernels.group_attention",
  "BlockMask": "pallas_kernels.metadata",
  "TileLayout": "pallas_kernels.metadata",
  "group_layout": "pallas_kernels.metadata",
  "pack_tiles": "pallas_kernels.metadata",
  "unpack_tiles": "pallas_kernels.metadata",
  "window_layout": "pallas_kernels.metadata",
  "frame_attention": "pallas_kernels.shot_window_attention",
  "shot_window_attention": "pallas_kernels.shot_window_attention",
  "window_attention": "pallas_kernels.window_attention",
}

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


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
  """Importing a submodule binds it as an attribute of the package. Three submodules share
  their name with the function they define (`pallas_kernels.group_attention` is the function,
  as before); keep the function when the import system binds the module."""

  def __setattr__(self, name, value):
    if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
      value = getattr(value, name)
    super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
