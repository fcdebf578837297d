"""moga-jax: Mixture-of-Groups Attention for long-video diffusion transformers in JAX/Flax.

`import moga_jax` loads nothing but this file: the names below are imported on first use (the
module layer needs jax and flax only, the core install, and loads none of the `train` / `wan`
extras' packages; tests/test_packaging.py checks both). The subpackages:

  model/        MoGAAttention, routing, the DiT and its layers, the typed model configs
  diffusion/    flow matching: the loss, the Euler and UniPC samplers, sampling a trained model
  parallel/     the device mesh, logical-axis shardings, sequence parallelism, TPU slices
  train/        optimizer, train state and step, checkpoints, EMA, run safety, config checks
  data/         synthetic and real multi-shot videos, the TFDS builder, the grain loader, video I/O
  wan/          Wan 2.1: weight import and export, umT5, the VAE, the pipeline
  tools/        the planner, whole-model FLOPs, TPU / GPU compile checks
  reproduction/ the CPU reproduction of the paper's claims, its data and metrics
  cli/          the installed commands

Module paths from before the subpackages still import, with a DeprecationWarning
(`moga_jax._aliases`).
"""

from importlib import metadata as _metadata

from moga_jax import _aliases
from moga_jax._lazy import lazy_exports

_aliases.install()

try:
  __version__ = _metadata.version("moga-jax")
except _metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
  __version__ = "0.1.0"  # keep equal to pyproject.toml's [project] version (a test checks)

_EXPORTS = {
  "MoGAAttention": "moga_jax.model.attention",
  "VideoDiT": "moga_jax.model.dit",
  "DENSE": "moga_jax.model.config",
  "AttentionConfig": "moga_jax.model.config",
  "DiTConfig": "moga_jax.model.config",
  "GroupRouter": "moga_jax.model.routing",
  "RouterOutput": "moga_jax.model.routing",
  "balance_loss": "moga_jax.model.routing",
  "routed_group_attention": "moga_jax.model.routing",
  "group_attention": "pallas_kernels",
  "window_attention": "pallas_kernels",
  "shot_window_attention": "pallas_kernels",
  "frame_attention": "pallas_kernels",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted([*_EXPORTS, "__version__"])
