"""Which implementation runs, with which options and tile: one registry, one `resolve`.

`implementation=None` picks the best implementation that can run on the target platform and
falls back to "xla", which runs everywhere; for short sequences (at most `SHORT_SEQUENCE`
tokens) it picks the dense masked computation, exact and cheaper there than any tiled loop. A
name asks for exactly that implementation and fails fast, before tracing, with the reason it
cannot run. Nothing here imports a kernel backend: `layout_ops.block_sparse_attention` loads
the TPU or GPU module when it runs that kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.common import cdiv, check_positive_int
from pallas_kernels.validation import check_interpret


@dataclasses.dataclass(frozen=True)
class Implementation:
  name: str
  summary: str
  # Returns None when it can run on `backend` (with `interpret`), else the reason it cannot.
  unavailable: Callable[[str, bool | None], str | None]


def _always(backend: str, interpret: bool | None) -> None:
  del backend, interpret
  return None


def _needs(platform: str):
  """A Pallas kernel compiled for `platform`, or run anywhere in interpret mode."""

  def unavailable(backend: str, interpret: bool | None) -> str | None:
    if backend == platform or interpret_mode(interpret, backend):
      return None
    if interpret is False:
      return f"it compiles only for {platform.upper()} and interpret=False was given"
    return (
      f"it compiles only for {platform.upper()}; pass interpret=True to run it in Pallas "
      "interpret mode (slow, for tests)"
    )

  return unavailable


def interpret_mode(interpret: bool | None, backend: str | None = None) -> bool:
  """interpret=None means interpret mode exactly when there is no accelerator (CPU)."""
  if interpret is None:
    return (backend or jax.default_backend()) == "cpu"
  return interpret


IMPLEMENTATIONS: dict[str, Implementation] = {
  impl.name: impl
  for impl in (
    Implementation(
      "reference",
      "dense masked attention, O(N^2) memory: the tests' oracle, "
      "and None's choice for short sequences",
      _always,
    ),
    Implementation("xla", "exact blocked algorithm in plain JAX, any backend", _always),
    Implementation("pallas_tpu", "Pallas Mosaic TPU block-sparse kernel", _needs("tpu")),
    Implementation("pallas_gpu", "Pallas Triton GPU block-sparse kernel", _needs("gpu")),
  )
}

# Tried in order by implementation=None; the last entry must run everywhere.
_PREFERENCE: dict[str, tuple[str, ...]] = {
  "tpu": ("pallas_tpu", "xla"),
  "gpu": ("pallas_gpu", "xla"),
}
_DEFAULT_PREFERENCE = ("xla",)

# Up to this many tokens, implementation=None runs the dense masked computation: its N x N
# scores are small, and the tiled paths' fixed costs (layouts, loops, kernel launches) would
# dominate. Measured on the tiny config (192-256 tokens, CPU): a training step of the paper's
# block took 1.32 s through "xla" against 0.79 s for plain dense attention.
SHORT_SEQUENCE = 512


def resolve_implementation(
  implementation: str | None,
  *,
  interpret: bool | None = None,
  backend: str | None = None,
  seq: int | None = None,
) -> str:
  """The name of the implementation to run on `backend` (None: `jax.default_backend()`), or
  ValueError saying why the named one cannot. seq: the sequence length, when known; None with
  seq <= SHORT_SEQUENCE gives "reference". (The name only; `resolve` is what the ops call.)"""
  backend = backend or jax.default_backend()
  if implementation is None and seq is not None and seq <= SHORT_SEQUENCE:
    return "reference"
  if implementation is None:
    for name in _PREFERENCE.get(backend, _DEFAULT_PREFERENCE):
      if IMPLEMENTATIONS[name].unavailable(backend, interpret) is None:
        return name
    raise AssertionError("the last preference must always be available")  # pragma: no cover
  if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
    known = ", ".join(repr(n) for n in IMPLEMENTATIONS)
    raise ValueError(f"implementation must be None or one of {known}; got {implementation!r}")
  reason = IMPLEMENTATIONS[implementation].unavailable(backend, interpret)
  if reason is not None:
    raise ValueError(
      f"implementation={implementation!r} cannot run on backend {backend!r}: {reason}"
    )
  return implementation


PLATFORMS = ("cpu", "gpu", "tpu")


def _platform_of(x) -> str | None:
  """The platform x lives on, where x says: a concrete array's devices, or (JAX >= 0.11) the
  abstract device of a traced value's mesh, as under `jit(f).lower(...)` with inputs placed on
  compile-only TPU devices. None when x does not say."""
  sharding = (
    getattr(getattr(x, "aval", None), "sharding", None)
    if isinstance(x, jax.core.Tracer)
    else getattr(x, "sharding", None)
  )
  device = getattr(getattr(sharding, "mesh", None), "abstract_device", None)
  if device is not None:
    return device.platform
  if not isinstance(x, jax.core.Tracer):
    devices = getattr(sharding, "device_set", None)
    if devices:
      return next(iter(devices)).platform
  return None


def _target_platform(x, backend: str | None) -> str:
  """The platform an op compiles for: `backend` when given, else the platform x's devices say
  (see _platform_of), else `jax.default_backend()`. Lets a CPU host lower the real TPU or GPU
  kernels for chips it does not have (ahead-of-time compilation for pods)."""
  if backend is not None:
    if backend not in PLATFORMS:
      raise ValueError(f"backend must be None or one of {PLATFORMS}, got {backend!r}")
    return backend
  platform = _platform_of(x)
  if platform in PLATFORMS:
    return platform
  if platform == "cuda" or platform == "rocm":
    return "gpu"
  return jax.default_backend()


DEFAULT_TILE = 128

# The compiled GPU kernels keep a query tile and two pipeline stages of key and value tiles in
# shared memory, so what they ask for grows with tile x head_dim x bytes per value. At 128 x 128
# in bfloat16 (32 KiB a tile) the three kernels ask for 145-192 KiB of the 227 KiB an H100/H200
# block may have; the same tile in float32 asks for 320-384 KiB (moga_jax.gpu_compile for
# sm_90a; an H200 refused it with RESOURCE_EXHAUSTED), and 64 x 128 in float32 for 160-192 KiB.
GPU_TILE_BYTES = 128 * 128 * 2


def _gpu_tile_limit(head_dim: int, itemsize: int) -> int:
  """The largest power-of-two tile (>= 16) whose tile x head_dim x itemsize fits GPU_TILE_BYTES."""
  limit = max(GPU_TILE_BYTES // (head_dim * itemsize), 16)
  return 1 << (limit.bit_length() - 1)


def default_tile(seq: int, *, implementation: str, interpret: bool, head_dim: int, dtype) -> int:
  """Tokens per tile when the caller gives none: DEFAULT_TILE, less for short sequences (padding
  every group to 128 tokens would dwarf N). The compiled GPU kernels get a power of two that
  fits their shared memory at this head_dim and dtype (64 for float32 at head_dim 128)."""
  if implementation == "pallas_gpu" and not interpret:
    fits = _gpu_tile_limit(head_dim, jnp.dtype(dtype).itemsize)
    return min(DEFAULT_TILE, fits, max(16, 1 << (seq - 1).bit_length()))
  return min(DEFAULT_TILE, cdiv(seq, 8) * 8)


class Resolved(NamedTuple):
  """What an op runs: the implementation's name, its options (interpret resolved: a bool, or
  for "pallas_tpu" a `pltpu.InterpretParams`) and tokens per tile."""

  implementation: str
  options: KernelOptions
  tile: int


def resolve(
  implementation: str | None,
  *,
  x,
  tile: int | None = None,
  interpret=None,
  backend: str | None = None,
  options: KernelOptions | Mapping | None = None,
) -> Resolved:
  """What an op on x [batch, seq, heads, head_dim] runs, checked before anything is traced.

  implementation: None (the best available on the target platform: `backend`, else the one x's
    devices say, else `jax.default_backend()`) or a name, which must be able to run there.
  interpret: a shorthand for options.interpret (None: interpret mode exactly on CPU); it may
    not contradict it.
  tile: tokens per tile (checked), or None for `default_tile` of that implementation at x's
    length, head_dim and dtype.
  """
  _, seq, _, head_dim = x.shape
  options = KernelOptions.of(options)
  if tile is not None:
    tile = check_positive_int("tile", tile)
  target = _target_platform(x, backend)
  given = interpret if interpret is not None else options.interpret
  name = resolve_implementation(implementation, interpret=given, backend=target, seq=seq)
  resolved = check_interpret(given, name)
  if resolved is None:
    resolved = interpret_mode(None, target)
  options = options.with_interpret(resolved, given=interpret)
  if tile is None:
    tile = default_tile(
      seq, implementation=name, interpret=resolved, head_dim=head_dim, dtype=x.dtype
    )
  return Resolved(name, options, tile)


def check_hardware_tiling(
  implementation: str,
  *,
  tile: int,
  head_dim: int,
  elements: int | None = None,
  itemsize: int | None = None,
) -> None:
  """Shape rules of the compiled kernels (interpret mode has none). itemsize: bytes per value
  of q, k and v (None: not checked)."""
  if implementation == "pallas_tpu" and tile % 8:
    raise ValueError(
      f"pallas_tpu needs tokens per tile to be a multiple of 8 (128 or more for speed), got {tile}"
    )
  if implementation == "pallas_gpu":
    if elements is not None and elements >= 2**31:
      raise ValueError(
        f"pallas_gpu addresses q, k and v with 32-bit offsets, but they hold {elements:,} "
        "values per tensor (batch x heads x tiled tokens x head_dim >= 2**31); shard the "
        "heads (Ulysses / tensor parallelism) or run fewer rows per call"
      )
    for name, size in (("tokens per tile", tile), ("head_dim", head_dim)):
      if size < 16 or size & (size - 1):
        raise ValueError(f"pallas_gpu (Triton) needs {name} to be a power of two >= 16, got {size}")
    if itemsize is not None and tile * head_dim * itemsize > GPU_TILE_BYTES:
      raise ValueError(
        f"pallas_gpu (Triton) needs tokens per tile x head_dim x bytes per value <= "
        f"{GPU_TILE_BYTES} to fit its tiles in shared memory, got {tile} x {head_dim} x "
        f"{itemsize}; use tile={_gpu_tile_limit(head_dim, itemsize)} (tile=None picks it) or "
        "bfloat16 inputs"
      )
