"""The model layer: MoGAAttention and its routing, the Wan-layout VideoDiT and its layers, the
typed model configs, and the tiny text-to-video stand-in (`text_to_video`). Needs jax and flax
only. Names load on first use; `moga_jax.model.TextToVideo` (this package was one module
before the subpackages) still works."""

from moga_jax._lazy import lazy_exports

_EXPORTS = {
  "MoGAAttention": "moga_jax.model.attention",
  "VideoDiT": "moga_jax.model.dit",
  "DENSE": "moga_jax.model.config",
  "AttentionConfig": "moga_jax.model.config",
  "DiTConfig": "moga_jax.model.config",
  "GroupRouter": "moga_jax.model.routing",
  "TextToVideo": "moga_jax.model.text_to_video",
  "dit_from_config": "moga_jax.model.text_to_video",
  "frame_shots": "moga_jax.model.text_to_video",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
