"""`KernelOptions`: every tuning knob of the block-sparse kernels, in one frozen value.

It travels as one static argument from the public ops (`options=`) and the Flax module
(`kernel_options=`, `config.model.attention.kernel_options`) down to the kernels. None fields
take the default for the shape at hand; none of them changes the result beyond float rounding.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class KernelOptions:
  """interpret: Pallas interpret mode (None: exactly when running on CPU; for "pallas_tpu" also
    a `pltpu.InterpretParams`, the stricter TPU simulator). Ignored by "xla" and "reference".
  xla_chunk_tokens: query tokens the "xla" path advances together (chunk_tokens // tile tiles):
    bigger chunks mean fewer loop steps and bigger matmuls, but more idle lanes where the tiles'
    key ranges differ in length.
  num_warps, num_stages: Triton launch parameters of every "pallas_gpu" kernel (None: the
    measured heuristic, `gpu.launch_params`: 8 warps above 64 x 64 values a tile, 2 stages).
  visits_per_row: key tiles the query tiles of one row visit in all, an estimate for the
    `pl.CostEstimate` of the "pallas_tpu" kernels (XLA schedules around them with it) where
    the mask is data when tracing (routed groups; `group_attention` fills it in for uniform
    routing). A mask known when tracing is counted exactly instead; None: no estimate.
  """

  interpret: Any = None
  xla_chunk_tokens: int = 2048
  num_warps: int | None = None
  num_stages: int | None = None
  visits_per_row: float | None = None

  def __post_init__(self):
    if not (self.interpret is None or isinstance(self.interpret, bool)):
      from jax.experimental.pallas import tpu as pltpu

      if not isinstance(self.interpret, pltpu.InterpretParams):
        raise TypeError(
          "KernelOptions.interpret must be None, a bool or pltpu.InterpretParams, got "
          f"{type(self.interpret).__name__}"
        )
    for name in ("xla_chunk_tokens", "num_warps", "num_stages"):
      value = getattr(self, name)
      if value is None and name != "xla_chunk_tokens":
        continue
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"KernelOptions.{name} must be a positive int, got {value!r}")
    if self.visits_per_row is not None and not (
      isinstance(self.visits_per_row, numbers.Real) and self.visits_per_row > 0
    ):
      raise ValueError(
        f"KernelOptions.visits_per_row must be a positive number, got {self.visits_per_row!r}"
      )
    if self.num_warps is not None and self.num_warps & (self.num_warps - 1):
      raise ValueError(f"KernelOptions.num_warps must be a power of two, got {self.num_warps}")

  @classmethod
  def of(cls, options: KernelOptions | Mapping | None) -> KernelOptions:
    """options as a KernelOptions: None gives the defaults, a mapping (a config section) its
    fields; an unknown field raises ValueError naming it."""
    if options is None:
      return cls()
    if isinstance(options, cls):
      return options
    if isinstance(options, Mapping):
      known = {f.name for f in dataclasses.fields(cls)}
      unknown = sorted(set(options) - known)
      if unknown:
        raise ValueError(f"unknown kernel option(s) {unknown}; known: {sorted(known)}")
      return cls(**dict(options))
    raise TypeError(f"options must be None, a KernelOptions or a mapping, got {options!r}")

  def with_interpret(self, interpret, *, given) -> KernelOptions:
    """These options with `interpret` resolved. `given` is the op's own interpret= argument
    (a shorthand): it may not contradict options.interpret."""
    if given is not None and self.interpret is not None and given != self.interpret:
      raise ValueError(
        f"interpret={given!r} contradicts options.interpret={self.interpret!r}; give one"
      )
    return dataclasses.replace(self, interpret=interpret)
