"""The device mesh, logical axis rules, and the shardings they give parameters, optimizer state,
batches and activations.

Mesh axes ('data', 'fsdp', 'context', 'share', 'tensor'): batches split over data x fsdp,
parameters and optimizer state over fsdp (and tensor for attention heads and FFN width), token
sequences over context x share between attention blocks (inside attention, context splits the
heads (Ulysses) and share splits the attention's work past the head count: see
`sequence_parallel.py`), heads over tensor.
Code names what an axis *is* (a logical name such as 'activation_length' or 'embed'); the
config's rules say which mesh axes carry it, so one model runs on any mesh.

The mesh's axis types are chosen explicitly as Auto: the model annotates activations at block
boundaries and lets the compiler propagate shardings between them (FSDP weight all-gathers
included); attention runs inside `jax.shard_map`, where the layout is fully manual.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from moga_jax.parallel.axes import (
  ACTIVATION_BATCH,
  ACTIVATION_LENGTH,
  EMBED,
  HEADS,
  LOGICAL_AXES,
  MESH_AXES,
  MLP,
  SHARE,
)

# The sequence axis that splits attention's work by units (groups, windows, frames) instead of
# by heads; every other sequence axis trades the sequence for heads (Ulysses).
SHARE_AXIS = SHARE

MeshAxes = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class ShardingRules:
  """Logical axis name -> mesh axes (None: replicated). Hashable, so modules keep it static."""

  rules: tuple[tuple[str, MeshAxes], ...]

  def __post_init__(self):
    seen = set()
    for entry in self.rules:
      if not (isinstance(entry, tuple | list) and len(entry) == 2):
        raise ValueError(f"sharding rules must be (logical_name, mesh_axes) pairs, got {entry!r}")
      name, axes = entry
      if name not in LOGICAL_AXES:
        raise ValueError(
          f"unknown logical axis {name!r} in the sharding rules; known: {', '.join(LOGICAL_AXES)}"
        )
      if name in seen:
        raise ValueError(f"logical axis {name!r} has two sharding rules")
      seen.add(name)
      for axis in _as_tuple(axes):
        if axis not in MESH_AXES:
          raise ValueError(
            f"sharding rule {name!r} -> {axes!r} names mesh axis {axis!r}; the "
            f"mesh axes are {MESH_AXES}"
          )

  @classmethod
  def from_config(cls, rules: Sequence) -> ShardingRules:
    """From the config's list of [name, axes] pairs (ml_collections turns tuples into lists)."""
    return cls(tuple((name, _normalise(axes)) for name, axes in rules))

  def mesh_axes(self, logical: str | None) -> tuple[str, ...]:
    """The mesh axes of a logical name: () when it has no rule (replicated). A name outside
    LOGICAL_AXES is a typo in the model, not a wish to replicate, and raises."""
    if logical is None:
      return ()
    if logical not in LOGICAL_AXES:
      raise ValueError(f"unknown logical axis name {logical!r}; known: {', '.join(LOGICAL_AXES)}")
    for name, axes in self.rules:
      if name == logical:
        return _as_tuple(axes)
    return ()

  def spec(self, *logical: str | None) -> P:
    return P(*(spec_entry(self.mesh_axes(name)) for name in logical))


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def _normalise(axes) -> MeshAxes:
  axes = _as_tuple(axes)
  return None if not axes else axes[0] if len(axes) == 1 else axes


def spec_entry(axes: tuple[str, ...]) -> MeshAxes:
  return None if not axes else axes[0] if len(axes) == 1 else axes


def axes_size(mesh_shape: Mapping[str, int], axes: Sequence[str]) -> int:
  return math.prod(mesh_shape[a] for a in axes)


def ulysses_size(mesh_shape: Mapping[str, int], rules: ShardingRules) -> int:
  """How many ways attention splits the heads over the sequence axes (all but 'share')."""
  axes = [a for a in rules.mesh_axes(ACTIVATION_LENGTH) if a != SHARE_AXIS]
  return math.prod(mesh_shape.get(a, 1) for a in axes)


def resolve_mesh_shape(mesh_shape: Mapping[str, int], device_count: int) -> dict[str, int]:
  """Fills the one -1 axis with the devices left; checks the product is device_count."""
  unknown = sorted(set(mesh_shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh axes {unknown} are not mesh axes; use {MESH_AXES}")
  shape = {a: int(mesh_shape.get(a, 1)) for a in MESH_AXES}
  free = [a for a, n in shape.items() if n == -1]
  if len(free) > 1 or any(n < 1 and n != -1 for n in shape.values()):
    raise ValueError(
      f"mesh shape {shape}: each axis needs a size >= 1, and at most one may be "
      "-1 (all devices left)"
    )
  fixed = math.prod(n for n in shape.values() if n != -1)
  if free:
    if device_count % fixed:
      raise ValueError(
        f"mesh shape {shape}: the fixed axes use {fixed} devices, which does not "
        f"divide the {device_count} devices available"
      )
    shape[free[0]] = device_count // fixed
  if math.prod(shape.values()) != device_count:
    raise ValueError(
      f"mesh shape {shape} uses {math.prod(shape.values())} devices but "
      f"{device_count} are available"
    )
  return shape


def make_mesh(mesh_shape: Mapping[str, int], devices: Sequence | None = None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'context', 'share', 'tensor') mesh over `devices` (default: all).

  Devices are laid out by `jax.make_mesh`, which keeps each mesh axis on physical torus axes;
  where it cannot (an 8-way axis on v5p's 4x4x4 torus), an axis may span several physical
  ones (`allow_split_physical_axes`): still correct, with longer paths for that axis."""
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  sizes = tuple(shape[a] for a in MESH_AXES)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(sizes, MESH_AXES, axis_types=axis_types, devices=devices)
  except (ValueError, NotImplementedError, AssertionError):
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


# Parameter path (joined with '.') -> logical axes, first match wins. Tensor parallelism follows
# the usual split: q/k/v and FFN-in by output columns, o and FFN-out by input rows, so a block
# needs one reduction per matmul pair. Anything unmatched is FSDP-sharded on its largest dim.
_PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
  (r"(self_attn|cross_attn)\.(q|k|v)\.kernel$", (EMBED, HEADS)),
  (r"(self_attn|cross_attn)\.(q|k|v)\.bias$", (HEADS,)),
  (r"(self_attn|cross_attn)\.o\.kernel$", (HEADS, EMBED)),
  (r"(self_attn|cross_attn)\.norm_(q|k)\.scale$", (HEADS,)),
  (r"self_attn\.router\.proj\.kernel$", (EMBED, None)),
  (r"ffn\.fc1\.kernel$", (EMBED, MLP)),
  (r"ffn\.fc1\.bias$", (MLP,)),
  (r"ffn\.fc2\.kernel$", (MLP, EMBED)),
  (r"modulation$", (None, None, None)),  # 6 x dim per block: replicated, added to [B, 6, dim]
)


def param_logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
  """Logical axes of a parameter (or of optimizer state shaped like it) from its path.

  A leading extra dim (blocks stacked by nnx.scan) is left unsharded. Unmatched tensors get
  'embed' (the FSDP axis) on their largest dim, decided later from the shape.
  """
  for pattern, axes in _PARAM_RULES:
    if re.search(pattern, path):
      if ndim == len(axes):
        return axes
      if ndim == len(axes) + 1:
        return (None, *axes)
  return ()


def param_spec(
  path: str, shape: tuple[int, ...], mesh_shape: Mapping[str, int], rules: ShardingRules
) -> P:
  if not shape:
    return P()
  logical = param_logical_axes(path, len(shape))
  if not logical:  # FSDP on the largest dim the fsdp axes divide
    fsdp = rules.mesh_axes(EMBED)
    size = math.prod(mesh_shape.get(a, 1) for a in fsdp)
    logical = [None] * len(shape)
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if shape[dim] % size == 0:
        logical[dim] = EMBED
        break
  entries, used = [], set()
  for dim, name in zip(shape, logical, strict=True):
    # Axes of size 1 (or absent from mesh_shape) split nothing: left out of the spec.
    axes = tuple(a for a in rules.mesh_axes(name) if a not in used and mesh_shape.get(a, 1) > 1)
    # A dim the axes do not divide stays replicated (e.g. a width-6 modulation axis).
    if axes and dim % axes_size(mesh_shape, axes) == 0:
      used.update(axes)
      entries.append(spec_entry(axes))
    else:
      entries.append(None)
  return P(*entries)


def _path_str(key_path) -> str:
  parts = []
  for key in key_path:
    name = getattr(key, "key", getattr(key, "idx", getattr(key, "name", None)))
    if name is not None and name != "value":
      parts.append(str(name))
  return ".".join(parts)


def state_shardings(state, mesh: jax.sharding.Mesh, rules: ShardingRules):
  """NamedShardings for every array of an nnx state (model and optimizer alike), by path."""
  mesh_shape = dict(mesh.shape)

  def one(key_path, leaf):
    return NamedSharding(
      mesh, param_spec(_path_str(key_path), tuple(np.shape(leaf)), mesh_shape, rules)
    )

  return jax.tree_util.tree_map_with_path(one, state)


def batch_spec(rules: ShardingRules) -> P:
  """Batches are split along their leading axis over the activation_batch axes."""
  return rules.spec(ACTIVATION_BATCH)


def process_batch_slice(
  mesh: jax.sharding.Mesh, rules: ShardingRules, global_batch: int
) -> tuple[int, int]:
  """(shard_index, shard_count): which 1/shard_count of each global batch this process loads.

  The rows a process must supply are those its devices hold under the batch sharding; processes
  whose devices hold the same rows (batch replicated across them) load the same slice.
  """
  sharding = NamedSharding(mesh, batch_spec(rules))
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    sl = index[0]
    rows.add((sl.start or 0, global_batch if sl.stop is None else sl.stop))
  start, stop = min(r[0] for r in rows), max(r[1] for r in rows)
  size = stop - start
  if global_batch % size or start % size:
    raise ValueError(
      f"this process's devices hold batch rows [{start}, {stop}) of "
      f"{global_batch}: not one equal slice; reorder the mesh devices"
    )
  return start // size, global_batch // size


def constrain(x: jax.Array, rules: ShardingRules | None, *logical: str | None) -> jax.Array:
  """with_sharding_constraint by logical names under the current mesh; no-op without one."""
  if rules is None or _no_mesh():
    return x
  return jax.lax.with_sharding_constraint(x, rules.spec(*logical))


def _no_mesh() -> bool:
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.empty or mesh.size == 1
