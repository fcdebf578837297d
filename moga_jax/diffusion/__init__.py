"""Rectified flow as Wan trains and samples it: the loss and the samplers (`flow`), UniPC
(`unipc`), and sampling a model trained here (`sampling`). Names load on first use;
`from moga_jax.diffusion import flow_matching_loss` (this package was one module before the
subpackages) still works."""

from moga_jax._lazy import lazy_exports

_EXPORTS = {
  name: "moga_jax.diffusion.flow"
  for name in (
    "SOLVERS",
    "euler_sample",
    "flow_matching_loss",
    "guided",
    "noisy_sample",
    "sample_flow",
    "sample_times",
    "shift_time",
  )
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
