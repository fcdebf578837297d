"""Argument checks shared by the public ops: clear errors, raised before anything is traced.

The checks that are not about attention (`check_int`, `check_positive_int`, `check_int_triple`)
live in `pallas_kernels.common` (no JAX); they are re-exported here under their old names.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from pallas_kernels.common import check_int as check_int
from pallas_kernels.common import check_int_triple as check_int_triple
from pallas_kernels.common import check_positive_int as check_positive_int


def check_qkv(q, k, v) -> tuple[int, int, int, int]:
  """q, k, v must be floating [batch, seq, heads, head_dim] arrays of one shape and dtype."""
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim != 4:
      raise ValueError(
        f"{name} must have shape [batch, seq, heads, head_dim], got shape "
        f"{tuple(x.shape)} ({x.ndim} dims, need 4)"
      )
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if jnp.dtype(x.dtype).itemsize > 4:  # accumulation is float32: float64 would lose silently
      raise ValueError(
        f"{name} must be float32, bfloat16 or float16 (the kernels accumulate in float32), got "
        f"{x.dtype}: cast it to float32"
      )
  for name, x in (("k", k), ("v", v)):
    if x.shape != q.shape:
      raise ValueError(f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(x.shape)}")
    if x.dtype != q.dtype:
      raise ValueError(f"{name} must have the dtype of q ({q.dtype}), got {x.dtype}")
  batch, seq, heads, head_dim = q.shape
  for size, what in ((batch, "batch element"), (seq, "token"), (heads, "head")):
    if size == 0:
      raise ValueError(f"q must hold at least one {what}, got shape {tuple(q.shape)}")
  if head_dim == 0:
    raise ValueError(f"q must have head_dim >= 1, got shape {tuple(q.shape)}")
  return batch, seq, heads, head_dim


def check_scale(scale, head_dim: int) -> float:
  if scale is None:
    return 1.0 / float(np.sqrt(head_dim))
  if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
    raise TypeError(f"scale must be a Python float or None, got {type(scale).__name__}")
  if not np.isfinite(scale):
    raise ValueError(f"scale must be finite, got {scale}")
  return float(scale)


def check_group_ids(
  group_ids, *, batch: int, seq: int, heads: int, num_groups: int, check_ids: bool = False
) -> jax.Array:
  """Returns group ids as int32 [batch, seq, routed_heads] with routed_heads in {1, heads}.

  Values are range-checked when they are concrete; traced ids are the caller's contract (ids
  outside [0, num_groups) are clipped into it so that the computation stays defined), unless
  `check_ids`: then a `checkify.check` on them, for a caller wrapped in `checkify.checkify`.
  """
  if not hasattr(group_ids, "shape") or not hasattr(group_ids, "dtype"):
    raise TypeError(f"group_ids must be an integer array, got {type(group_ids).__name__}")
  if not jnp.issubdtype(group_ids.dtype, jnp.integer):
    raise ValueError(f"group_ids must have an integer dtype (int32), got {group_ids.dtype}")
  shape = tuple(group_ids.shape)
  if shape == (batch, seq):
    group_ids = group_ids[..., None]
  elif shape != (batch, seq, heads):
    raise ValueError(
      f"group_ids must have shape [batch, seq, heads] = {(batch, seq, heads)} (per-head "
      f"routing) or [batch, seq] = {(batch, seq)} (shared by the heads), got {shape}"
    )
  if not isinstance(group_ids, jax.core.Tracer):
    values = np.asarray(group_ids)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_groups:
      raise ValueError(
        f"group_ids must lie in [0, num_groups={num_groups}), got values in [{low}, {high}]"
      )
  elif check_ids:
    low, high = jnp.min(group_ids), jnp.max(group_ids)
    checkify.check(
      (low >= 0) & (high < num_groups),
      f"group_ids must lie in [0, num_groups={num_groups}), got values in [{{low}}, {{high}}]",
      low=low,
      high=high,
    )
  return jnp.clip(group_ids.astype(jnp.int32), 0, num_groups - 1)


def check_interpret(interpret, implementation: str):
  """None, a bool, or (pallas_tpu only) a `pltpu.InterpretParams` for the TPU simulator."""
  if interpret is None or isinstance(interpret, bool):
    return interpret
  from jax.experimental.pallas import tpu as pltpu

  if isinstance(interpret, pltpu.InterpretParams):
    if implementation != "pallas_tpu":
      raise ValueError(
        f"interpret=pltpu.InterpretParams(...) applies to implementation="
        f"'pallas_tpu' only, got implementation={implementation!r}"
      )
    return interpret
  raise TypeError(
    f"interpret must be None, a bool or pltpu.InterpretParams, got {type(interpret).__name__}"
  )


def check_spatial_groups(value, grid_shape: tuple[int, int, int]) -> tuple[int, int]:
  """(sh, sw) windows per frame: positive ints with sh <= H and sw <= W."""
  if (
    not isinstance(value, (tuple, list))
    or len(value) != 2
    or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in value)
  ):
    raise TypeError(f"spatial_groups must be a (rows, cols) tuple of 2 ints, got {value!r}")
  _, height, width = grid_shape
  sh, sw = (int(x) for x in value)
  if not (1 <= sh <= height and 1 <= sw <= width):
    raise ValueError(
      f"spatial_groups must be positive and at most the frame's (H, W) = "
      f"{(height, width)} tokens, got {(sh, sw)}"
    )
  return sh, sw


def check_shot_ids(shot_ids, *, batch: int, frames: int, check_ids: bool = False) -> jax.Array:
  """int [batch, frames], non-decreasing along frames when concrete (traced: a
  `checkify.check` when `check_ids`, for a caller wrapped in `checkify.checkify`); returned
  as int32."""
  if not hasattr(shot_ids, "shape") or not hasattr(shot_ids, "dtype"):
    raise TypeError(f"shot_ids must be an integer array, got {type(shot_ids).__name__}")
  if not jnp.issubdtype(shot_ids.dtype, jnp.integer):
    raise ValueError(f"shot_ids must have an integer dtype (int32), got {shot_ids.dtype}")
  if tuple(shot_ids.shape) != (batch, frames):
    raise ValueError(
      f"shot_ids must have shape [batch, frames] = {(batch, frames)} (the shot "
      f"of each latent frame), got {tuple(shot_ids.shape)}"
    )
  if not isinstance(shot_ids, jax.core.Tracer):
    steps = np.diff(np.asarray(shot_ids), axis=1)
    if (steps < 0).any():
      b, t = np.argwhere(steps < 0)[0]
      raise ValueError(
        f"shot_ids must be non-decreasing along the frames; batch element {b} "
        f"goes from {int(shot_ids[b, t])} to {int(shot_ids[b, t + 1])} at frame "
        f"{t + 1}"
      )
  elif check_ids and frames > 1:
    steps = jnp.diff(shot_ids, axis=1)
    first = jnp.argmax((steps < 0).reshape(-1))  # the first decrease, row-major
    b, t = first // (frames - 1), first % (frames - 1)
    checkify.check(
      jnp.all(steps >= 0),
      "shot_ids must be non-decreasing along the frames; batch element {b} goes from {a} to "
      "{c} at frame {t}",
      b=b,
      a=shot_ids[b, t],
      c=shot_ids[b, t + 1],
      t=t + 1,
    )
  return jnp.asarray(shot_ids, jnp.int32)


def check_share(share):
  """None, or a `WorkShare` (or an (index, count) pair) with count >= 1 and, when concrete,
  0 <= index < count."""
  from pallas_kernels.metadata import WorkShare

  if share is None:
    return None
  if not isinstance(share, tuple) or len(share) != 2:
    raise TypeError(f"share must be None or a WorkShare(index, count), got {share!r}")
  index, count = share
  count = check_int("share.count", count)
  if not isinstance(index, jax.core.Tracer) and not 0 <= int(index) < count:
    raise ValueError(f"share.index must be in [0, {count}), got {int(index)}")
  return WorkShare(jnp.asarray(index, jnp.int32), count)
