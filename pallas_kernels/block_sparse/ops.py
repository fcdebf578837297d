"""Which implementation runs: one registry, one resolver.

`implementation=None` picks the best implementation that can run on the current backend and
falls back to "xla", which runs everywhere; for short sequences (at most `SHORT_SEQUENCE`
tokens) it picks the dense masked computation, exact and cheaper there than any tiled loop. A
name asks for exactly that implementation and fails fast, before tracing, with the reason it
cannot run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from pallas_kernels.block_sparse.gpu import block_sparse_attention_gpu
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.block_sparse.tpu import block_sparse_attention_tpu
from pallas_kernels.block_sparse.xla import block_sparse_attention_xla
from pallas_kernels.metadata import TileLayout, cdiv, pack_tiles, repeat_rows, unpack_tiles
from pallas_kernels.validation import check_interpret, check_positive_int


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
  """Returns the name of the implementation to run, or raises ValueError saying why not.

  seq: the sequence length, when known; None with seq <= SHORT_SEQUENCE gives "reference".
  """
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


def target_backend(x=None, *, backend: str | None = None) -> str:
  """The platform an op compiles for: `backend` when given, else the platform x's devices say
  (see _platform_of), else `jax.default_backend()`. Lets a CPU host lower the real TPU or GPU
  kernels for chips it does not have (ahead-of-time compilation for pods)."""
  if backend is not None:
    if backend not in PLATFORMS:
      raise ValueError(f"backend must be None or one of {PLATFORMS}, got {backend!r}")
    return backend
  platform = _platform_of(x) if x is not None else None
  if platform in PLATFORMS:
    return platform
  if platform == "cuda" or platform == "rocm":
    return "gpu"
  return jax.default_backend()


def choose_implementation(
  implementation: str | None, interpret, *, x, seq: int, backend: str | None = None
):
  """(name, interpret) of the implementation an op runs on x (see resolve_implementation and
  target_backend); interpret None becomes a bool for the target (interpret only on CPU)."""
  backend = target_backend(x, backend=backend)
  name = resolve_implementation(implementation, interpret=interpret, backend=backend, seq=seq)
  interpret = check_interpret(interpret, name)
  if interpret is None:
    interpret = interpret_mode(None, backend)
  return name, interpret


DEFAULT_TILE = 128

# The compiled GPU kernels keep a query tile and two pipeline stages of key and value tiles in
# shared memory, so what they ask for grows with tile x head_dim x bytes per value. At 128 x 128
# in bfloat16 (32 KiB a tile) the three kernels ask for 145-192 KiB of the 227 KiB an H100/H200
# block may have; the same tile in float32 asks for 320-384 KiB (moga_jax.tools.gpu_compile for
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


def choose_implementation_and_tile(
  implementation: str | None,
  interpret,
  tile: int | None,
  *,
  x,
  backend: str | None = None,
  options: KernelOptions | Mapping | None = None,
):
  """(name, options, tile) for an op on x [batch, seq, heads, head_dim]: the implementation
  (choose_implementation), the `KernelOptions` with interpret resolved (the op's interpret= is
  a shorthand for options.interpret), and the caller's tile (checked) or the default tile."""
  _, seq, _, head_dim = x.shape
  options = KernelOptions.of(options)
  if tile is not None:
    tile = check_positive_int("tile", tile)
  name, resolved = choose_implementation(
    implementation,
    interpret if interpret is not None else options.interpret,
    x=x,
    seq=seq,
    backend=backend,
  )
  options = options.with_interpret(resolved, given=interpret)
  if tile is None:
    tile = default_tile(
      seq, implementation=name, interpret=resolved, head_dim=head_dim, dtype=x.dtype
    )
  return name, options, tile


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


def block_sparse_attention(
  q,
  k,
  v,
  mask,
  *,
  scale: float,
  implementation: str,
  interpret: bool | None = None,
  pattern: str = "block_sparse",
  options: KernelOptions | None = None,
):
  """Runs a resolved block-sparse kernel: q, k, v [rows, num_tiles * tile, D], mask a BlockMask
  whose rows divide `rows` (see `repeat_rows`: mask row i serves rows // mask_rows consecutive
  activation rows). The TPU kernels read shared rows in place (SMEM is 1 MiB); the others get
  one row each. pattern names the kernels moga_<pattern>_fwd / _dq / _dkdv (the pallas_calls,
  or the xla sweeps' scopes), so a profile says which attention pattern a kernel serves.
  options: a `KernelOptions` (interpret= is a shorthand for options.interpret)."""
  options = KernelOptions.of(options)
  interpret = interpret_mode(interpret if interpret is not None else options.interpret)
  options = options.with_interpret(interpret, given=None)
  if implementation != "pallas_tpu":
    mask = repeat_rows(mask, q.shape[0])
  if implementation == "xla":
    return block_sparse_attention_xla(q, k, v, mask, scale=scale, options=options, pattern=pattern)
  if not interpret:
    check_hardware_tiling(
      implementation,
      tile=q.shape[1] // mask.num_tiles,
      head_dim=q.shape[2],
      elements=q.size,
      itemsize=q.dtype.itemsize,
    )
  if implementation == "pallas_tpu":
    options = _with_visit_count(options, mask)
    return block_sparse_attention_tpu(q, k, v, mask, scale, options, pattern)
  if implementation == "pallas_gpu":
    return block_sparse_attention_gpu(q, k, v, mask, scale, options, pattern)
  raise ValueError(f"no block-sparse kernel named {implementation!r}")


def _with_visit_count(options: KernelOptions, mask) -> KernelOptions:
  """options with visits_per_row counted from the mask when it is known here (host-built
  windows; inside the kernels' custom_vjp every mask is traced), for the TPU cost estimate."""
  try:
    count = np.asarray(mask.count)
  except jax.errors.TracerArrayConversionError:
    return options  # data (routed groups, shots): the caller's estimate, if any
  return dataclasses.replace(options, visits_per_row=float(count.sum()) / count.shape[0])


# What a remat policy can keep instead of recomputing the attention kernel in the backward pass,
# e.g. jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT_NAME).
ATTENTION_OUT_NAME = "moga_attention_out"


def attend_in_layout(
  q,
  k,
  v,
  layout: TileLayout,
  *,
  scale: float,
  implementation: str,
  interpret=None,
  pattern: str = "block_sparse",
  options: KernelOptions | None = None,
):
  """[B, N, H, D] -> the layout's tiles -> block-sparse kernel -> back to [B, N, H, D], each
  stage in a named scope (moga_<pattern>/pack, /attend, /unpack) for profiles."""
  batch, _, heads, head_dim = q.shape
  mask = layout.mask  # 1, batch or batch * heads rows: kernels share rows, never copy them

  def to_tiles(x):
    return pack_tiles(jnp.swapaxes(x, 1, 2), layout).reshape(batch * heads, -1, head_dim)

  with jax.named_scope(f"moga_{pattern}"):
    with jax.named_scope("pack"):
      tiles = to_tiles(q), to_tiles(k), to_tiles(v)
    with jax.named_scope("attend"):
      out = block_sparse_attention(
        *tiles,
        mask,
        scale=scale,
        implementation=implementation,
        interpret=interpret,
        pattern=pattern,
        options=options,
      )
      out = checkpoint_name(out, ATTENTION_OUT_NAME)
    with jax.named_scope("unpack"):
      out = unpack_tiles(out.reshape(batch, heads, layout.capacity, head_dim), layout)
      return jnp.swapaxes(out, 1, 2)
