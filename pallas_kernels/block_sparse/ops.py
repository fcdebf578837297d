"""Old import path, kept only for the code that still imports from it: re-exports, no code.

The dispatcher (registry, platform, tiles, hardware rules, `resolve`) lives in
`block_sparse.dispatch`; running a layout through a kernel in `block_sparse.layout_ops`.
Importers: moga_jax/remat.py (ATTENTION_OUT_NAME), moga_jax/gpu_compile.py
(check_hardware_tiling), tests/test_gpu_compile.py (default_tile). Import from the new modules.
"""

from pallas_kernels.block_sparse.dispatch import check_hardware_tiling, default_tile
from pallas_kernels.block_sparse.layout_ops import ATTENTION_OUT_NAME

__all__ = ["ATTENTION_OUT_NAME", "check_hardware_tiling", "default_tile"]
