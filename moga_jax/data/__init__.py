"""Data layer: synthetic multi-shot videos, a TF-free TFDS builder, a resumable grain loader, shot
detection on real footage and video I/O. Names load on first use, so `from moga_jax.data import
video_io` does not import the builder's tensorflow-datasets."""

from moga_jax._lazy import lazy_exports

_EXPORTS = {
  "MultiShotConfig": "moga_jax.data.builder",
  "MultiShotVideos": "moga_jax.data.builder",
  "SkippedVideoWarning": "moga_jax.data.builder",
  "build_dataset": "moga_jax.data.builder",
  "decode_captions": "moga_jax.data.captions",
  "encode_captions": "moga_jax.data.captions",
  "Shot": "moga_jax.data.index",
  "VideoEntry": "moga_jax.data.index",
  "read_index": "moga_jax.data.index",
  "find_dataset_dir": "moga_jax.data.pipeline",
  "make_loader": "moga_jax.data.pipeline",
  "make_synthetic_videos": "moga_jax.data.synthetic",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
