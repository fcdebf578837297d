"""moga-jax: Mixture-of-Groups Attention for long-video diffusion transformers in JAX/Flax.

`import moga_jax` is the module layer: it needs jax and flax only (the core install) and loads
none of the `train` / `wan` extras' packages (tests/test_packaging.py checks both).
"""

from importlib import metadata as _metadata

from moga_jax.attention import MoGAAttention
from moga_jax.dit import VideoDiT
from moga_jax.model_config import DENSE, AttentionConfig, DiTConfig
from moga_jax.routing import GroupRouter, RouterOutput, balance_loss, routed_group_attention
from pallas_kernels import group_attention, window_attention

try:
  __version__ = _metadata.version("moga-jax")
except _metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
  __version__ = "0.1.0"  # keep equal to pyproject.toml's [project] version (a test checks)

__all__ = [
  "DENSE",
  "AttentionConfig",
  "DiTConfig",
  "GroupRouter",
  "MoGAAttention",
  "RouterOutput",
  "VideoDiT",
  "__version__",
  "balance_loss",
  "group_attention",
  "routed_group_attention",
  "window_attention",
]
