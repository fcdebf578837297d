"""Running attention through a `TileLayout`: the one body every public op shares.

An attention pattern (`AttentionPattern`: groups, STGA windows, frames, 3D windows) is a layout
and a dense oracle. `attend_pattern` runs one: the oracle for implementation "reference", else
pack the tokens into the layout's tiles, run the block-sparse kernel over its `BlockMask`
(`block_sparse_attention`) and unpack (`attend_in_layout`). The TPU and GPU kernel modules are
imported only when their kernel runs, so the "xla" and "reference" paths never load Pallas.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from pallas_kernels.block_sparse.dispatch import Resolved, check_hardware_tiling, interpret_mode
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.block_sparse.xla import block_sparse_attention_xla
from pallas_kernels.metadata import TileLayout, WorkShare, pack_tiles, repeat_rows, unpack_tiles

# What a remat policy can keep instead of recomputing the attention kernel in the backward pass,
# e.g. jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT_NAME).
ATTENTION_OUT_NAME = "moga_attention_out"


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
  if implementation not in ("pallas_tpu", "pallas_gpu"):
    raise ValueError(f"no block-sparse kernel named {implementation!r}")
  if not interpret:
    check_hardware_tiling(
      implementation,
      tile=q.shape[1] // mask.num_tiles,
      head_dim=q.shape[2],
      elements=q.size,
      itemsize=q.dtype.itemsize,
    )
  if implementation == "pallas_tpu":
    from pallas_kernels.block_sparse.tpu import block_sparse_attention_tpu

    options = _with_visit_count(options, mask)
    return block_sparse_attention_tpu(q, k, v, mask, scale, options, pattern)
  from pallas_kernels.block_sparse.gpu import block_sparse_attention_gpu

  return block_sparse_attention_gpu(q, k, v, mask, scale, options, pattern)


def _with_visit_count(options: KernelOptions, mask) -> KernelOptions:
  """options with visits_per_row counted from the mask when it is known here (host-built
  windows; inside the kernels' custom_vjp every mask is traced), for the TPU cost estimate."""
  try:
    count = np.asarray(mask.count)
  except jax.errors.TracerArrayConversionError:
    return options  # data (routed groups, shots): the caller's estimate, if any
  return dataclasses.replace(options, visits_per_row=float(count.sum()) / count.shape[0])


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


class AttentionPattern:
  """A static attention pattern on the block-sparse contract. Subclasses are frozen dataclasses
  of the pattern's static arguments (hashable: `attend_pattern` compiles once per pattern
  value) and say, for their data operands (group ids, shot ids, or none):"""

  # The pattern's name in kernel and scope names (moga_<name>_fwd, moga_<name>/pack).
  name: str
  # Whether a share owns whole attention units, keys included (groups): then the tokens it does
  # not own are zeroed in q, k and v, else (query shares) in q only.
  share_owns_keys: bool = False

  def layout(self, *operands, tile: int, share: WorkShare | None) -> TileLayout:
    """The layout at `tile` tokens per tile; with a share, only its queries visit keys."""
    raise NotImplementedError

  def reference(self, q, k, v, *operands, scale: float) -> jax.Array:
    """The dense masked oracle, [B, N, H, D]."""
    raise NotImplementedError

  def owned(self, share: WorkShare, *operands, seq: int, tile: int) -> jax.Array:
    """bool, broadcastable against [B, N, H, 1]: the tokens a share computes."""
    raise TypeError(f"{type(self).__name__} takes no share")

  def visits_per_row(self, *, seq: int, tile: int) -> float | None:
    """The TPU cost estimate's guess of key tiles visited per row where the mask is data."""
    return None


def attend_pattern(
  pattern: AttentionPattern,
  q,
  k,
  v,
  *operands,
  scale: float,
  resolved: Resolved,
  share: WorkShare | None = None,
) -> jax.Array:
  """The public ops' shared body, after their argument checks and `resolve`: `pattern` on
  q, k, v [B, N, H, D] and its data operands, one compiled program per static configuration.
  With a share, the tokens it does not compute come back 0 (see `WorkShare`)."""
  options = resolved.options
  if options.visits_per_row is None:
    guess = pattern.visits_per_row(seq=q.shape[1], tile=resolved.tile)
    if guess is not None:
      options = dataclasses.replace(options, visits_per_row=guess)
  return _attend_pattern(
    pattern,
    q,
    k,
    v,
    operands,
    None if share is None else share.index,
    share_count=None if share is None else share.count,
    scale=scale,
    implementation=resolved.implementation,
    tile=resolved.tile,
    options=options,
  )


@functools.partial(
  jax.jit, static_argnames=("pattern", "share_count", "scale", "implementation", "tile", "options")
)
def _attend_pattern(
  pattern: AttentionPattern,
  q,
  k,
  v,
  operands: tuple,
  share_index,
  *,
  share_count: int | None,
  scale: float,
  implementation: str,
  tile: int,
  options: KernelOptions,
):
  share = None if share_count is None else WorkShare(share_index, share_count)
  if share is not None:
    owned = pattern.owned(share, *operands, seq=q.shape[1], tile=tile)
    q = jnp.where(owned, q, 0)
    if pattern.share_owns_keys:
      k, v = jnp.where(owned, k, 0), jnp.where(owned, v, 0)
  if implementation == "reference":
    out = pattern.reference(q, k, v, *operands, scale=scale)
  else:
    out = attend_in_layout(
      q,
      k,
      v,
      pattern.layout(*operands, tile=tile, share=share),
      scale=scale,
      implementation=implementation,
      options=options,
      pattern=pattern.name,
    )
  return out if share is None else jnp.where(owned, out, 0)
