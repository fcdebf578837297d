"""Small helpers that are not about attention: integer ceil-division and argument checks.

Standard library only, so that code outside the kernels (the data pipeline, video I/O, the
model's layers) can use them without loading JAX or any kernel backend. `pallas_kernels.metadata`
and `pallas_kernels.validation` re-export them under their old names.
"""

from __future__ import annotations

import numbers


def cdiv(a: int, b: int) -> int:
  """ceil(a / b) for ints, exactly (no float rounding)."""
  return -(-a // b)


def check_int(name: str, value, *, minimum: int = 1, maximum: int | None = None) -> int:
  """An int (numpy ints too, not bool) in [minimum, maximum]: TypeError / ValueError if not."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
  if value < minimum or (maximum is not None and value > maximum):
    upper = "" if maximum is None else f" and <= {maximum}"
    raise ValueError(f"{name} must be >= {minimum}{upper}, got {value}")
  return int(value)


def check_positive_int(name: str, value) -> int:
  return check_int(name, value, minimum=1)


def check_int_triple(name: str, value) -> tuple[int, int, int]:
  """A (t, h, w) triple of positive ints."""
  if (
    not isinstance(value, (tuple, list))
    or len(value) != 3
    or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in value)
  ):
    raise TypeError(f"{name} must be a (t, h, w) tuple of 3 ints, got {value!r}")
  if min(value) < 1:
    raise ValueError(f"{name} must hold positive sizes, got {tuple(value)}")
  return tuple(int(x) for x in value)
