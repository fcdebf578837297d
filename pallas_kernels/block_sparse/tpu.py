"""Block-sparse attention as Pallas Mosaic TPU kernels (forward, dq, dk/dv).

Grid (rows, query tiles, steps). The block mask arrives by scalar prefetch (SMEM) and drives the
key BlockSpec index maps: at step j a query tile's key/value block is its j-th key tile. Past a
tile's count the index map repeats the last block, which the pipeline does not fetch again, and
`pl.when` skips the compute, so skipped tiles are neither loaded nor computed. The step axis is
as long as the longest list (a traced grid bound, as in megablox), so routing can change every
step without recompiling. The dk/dv kernel walks the lists from the key side (the same lists for
symmetric masks, the mask's key-side runs for range masks). Tiles should be multiples of 128 on
TPU hardware.

What the layouts are for (checked by compiling for v5e/v6e from a CPU host, see
tests/test_tpu_compile.py):
- The metadata is not copied per head: a mask with fewer rows than the activations (1 for a
  static pattern, batch for routing shared by the heads) serves `rows // mask_rows` consecutive
  rows each, so scalar prefetch stays far below the 1 MiB of SMEM at 580K tokens.
- The log-sum-exp, the backward's delta and the per-query key ranges live lane-dense in HBM
  ([rows, 1, L]: blocks (1, tile)), not as [rows, L, 1] (a (8, 128)-tiled layout pads that
  128-fold: 2.7 of 3.4 GiB of temporaries at 580K); kernels turn a block into the [tile, 1]
  column the tile maths wants with one in-register transpose.

On a machine without a TPU the kernels run in Pallas interpret mode (`interpret=True`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse import tile_math
from pallas_kernels.block_sparse.flash_vjp import flash_attention_vjp, kernel_name
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.metadata import BlockMask, visited_tile

_F32 = tile_math.F32
_NUM_PREFETCH = 4  # start, count, tile_len, indices


class _Walk:
  """Index arithmetic over the prefetched metadata for a grid of `rows` activation rows.

  Activation row r reads metadata row r // share (share = rows // mask rows), so one row of
  metadata serves every head (or every batch element too) that shares its pattern.
  """

  def __init__(self, mask: BlockMask, rows: int):
    mask_rows, self.num_tiles = mask.start.shape
    if rows % mask_rows:
      raise ValueError(
        f"the block mask has {mask_rows} rows, which must divide the {rows} activation rows"
      )
    self.share = rows // mask_rows
    self.list_len = None if mask.indices is None else mask.indices.shape[-1]

  def meta_row(self, r):
    # lax.div, not //: r >= 0, and floor division lowers through `sign`, which asks the host
    # for its TPU generation and so breaks compiling for TPU from a CPU host.
    return lax.div(r, self.share) if self.share > 1 else r

  def at(self, r, t):
    """Flat index of (row r, tile t) in the per-tile metadata."""
    return self.meta_row(r) * self.num_tiles + t

  def column(self, r, t, j, start_ref, count_ref, idx_ref):
    """The key (or, in dk/dv, query) tile visited at step j; the last one again past the count."""
    i = self.at(r, t)
    j = jnp.minimum(j, jnp.maximum(count_ref[i] - 1, 0))
    if self.list_len is None:
      return visited_tile(start_ref[i], j)
    return visited_tile(start_ref[i], j, idx_ref, self.meta_row(r) * self.list_len)


# Per visited (query tile, key tile) pair: tile x tile x head_dim matmuls in the forward pass
# (q k^T, p v), dq (q k^T, do v^T, ds k) and dk/dv (q k^T, do v^T, p^T do, ds^T q).
_MATMULS = {"fwd": 2, "dq": 3, "dkdv": 4}


def visited_pairs(rows: int, options: KernelOptions) -> int | None:
  """(query tile, key tile) pairs a kernel over `rows` activation rows computes, from
  options.visits_per_row (`block_sparse_attention` counts it exactly for masks known when
  tracing; `group_attention` guesses it for routed groups), or None."""
  if options.visits_per_row is None:
    return None
  return round(options.visits_per_row * rows)


def cost_estimate(kind: str, pairs: int | None, tile: int, head_dim: int, itemsize: int):
  """XLA's scheduling hint for one TPU kernel (None without a visit count): 2 flops per
  multiply-add of its matmuls, one exp per score, and each visit reading a key (or query) tile
  and its value (or gradient) tile."""
  if pairs is None:
    return None
  return pl.CostEstimate(
    flops=2 * _MATMULS[kind] * pairs * tile * tile * head_dim,
    transcendentals=pairs * tile * tile,
    bytes_accessed=2 * pairs * tile * head_dim * itemsize,
  )


def _call(
  kernel,
  *,
  kind: str,
  pattern: str,
  mask: BlockMask,
  rows: int,
  in_specs,
  out_specs,
  out_shape,
  scratch,
  options: KernelOptions,
  operands,
):
  q = operands[0]
  tile, head_dim = q.shape[1] // mask.num_tiles, q.shape[2]
  pairs = visited_pairs(rows, options)
  steps = jnp.maximum(jnp.max(mask.count), 1)
  grid_spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=_NUM_PREFETCH,
    grid=(rows, mask.num_tiles, steps),
    in_specs=in_specs,
    out_specs=out_specs,
    scratch_shapes=scratch,
  )
  return pl.pallas_call(
    kernel,
    grid_spec=grid_spec,
    out_shape=out_shape,
    interpret=options.interpret,
    name=kernel_name(pattern, kind),
    cost_estimate=cost_estimate(kind, pairs, tile, head_dim, q.dtype.itemsize),
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
  )(*mask.flat_metadata(), *operands)


def _lane_dense(x):
  """[R, L] or [R, L, 1] -> [R, 1, L]: per-token scalars as one lane-dense row per sequence."""
  return x.reshape(x.shape[0], 1, -1)


def _specs(walk: _Walk, tile: int, head_dim: int):
  """BlockSpecs: activation tiles [tile, D] and lane-dense per-token rows [1, tile], read at the
  grid's own tile (at_row) or at the tile visited at this step (at_col); `meta=True` reads a
  per-token array that has one row per metadata row (the key ranges)."""

  def at_row(r, t, j, *refs):
    return (r, t)

  def at_col(r, t, j, start_ref, count_ref, len_ref, idx_ref):
    return (r, walk.column(r, t, j, start_ref, count_ref, idx_ref))

  def tiles(where):
    return pl.BlockSpec((None, tile, head_dim), lambda *a: (*where(*a), 0))

  def scalars(where, meta: bool = False):
    def index_map(*a):
      r, t = where(*a)
      return (walk.meta_row(r) if meta else r, 0, t)

    return pl.BlockSpec((None, 1, tile), index_map)

  return tiles, scalars, at_row, at_col


def _column_of(ref):
  """A lane-dense [1, tile] block as the [tile, 1] column the tile maths takes."""
  return ref[...].T


def _grid(mask: BlockMask, q):
  """(walk, tile, specs...) of a kernel whose grid rows walk `mask`."""
  rows, length, head_dim = q.shape
  walk = _Walk(mask, rows)
  tile = length // walk.num_tiles
  return (walk, tile, head_dim, *_specs(walk, tile, head_dim))


def _forward(q, k, v, mask: BlockMask, scale: float, options: KernelOptions, pattern: str):
  walk, tile, head_dim, tiles, scalars, at_row, at_col = _grid(mask, q)
  rows, length = q.shape[:2]
  ranges = tuple(_lane_dense(x) for x in mask.range_operands())

  def kernel(start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, *refs):
    range_refs, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = refs[: len(ranges)], refs[len(ranges) :]
    r, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _():
      m_ref[...], l_ref[...], acc_ref[...] = tile_math.init_state(tile, head_dim)

    @pl.when(j < count_ref[walk.at(r, t)])
    def _():
      col = walk.column(r, t, j, start_ref, count_ref, idx_ref)
      seen = tile_math.visible_in_pair(
        tile, len_ref[walk.at(r, col)], col, tuple(_column_of(ref) for ref in range_refs)
      )
      state = (m_ref[...], l_ref[...], acc_ref[...])
      m_ref[...], l_ref[...], acc_ref[...] = tile_math.attend(
        state, q_ref[...], k_ref[...], v_ref[...], seen, scale
      )

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
      out, lse = tile_math.finish((m_ref[...], l_ref[...], acc_ref[...]), o_ref.dtype)
      o_ref[...], lse_ref[...] = out, lse.T

  return _call(
    kernel,
    kind="fwd",
    pattern=pattern,
    mask=mask,
    rows=rows,
    options=options,
    operands=(q, k, v, *ranges),
    in_specs=[
      tiles(at_row),
      tiles(at_col),
      tiles(at_col),
      *[scalars(at_row, meta=True)] * len(ranges),
    ],
    out_specs=[tiles(at_row), scalars(at_row)],
    out_shape=[
      jax.ShapeDtypeStruct(q.shape, q.dtype),
      jax.ShapeDtypeStruct((rows, 1, length), _F32),
    ],
    scratch=[
      pltpu.VMEM((tile, 1), _F32),
      pltpu.VMEM((tile, 1), _F32),
      pltpu.VMEM((tile, head_dim), _F32),
    ],
  )


def _backward(
  q, k, v, out, lse, do, mask: BlockMask, scale: float, options: KernelOptions, pattern: str
):
  ranges = tuple(_lane_dense(x) for x in mask.range_operands())
  delta = _lane_dense(tile_math.softmax_delta(do, out)[..., 0])
  args = (q, k, v, do, lse, delta, ranges, mask, scale, options, pattern)
  return (_backward_dq(*args), *_backward_dkdv(*args))


def _backward_dq(q, k, v, do, lse, delta, ranges, mask, scale, options, pattern):
  """dq: the grid's rows are query tiles; each visits the key tiles the mask lets it read."""
  walk, tile, head_dim, tiles, scalars, at_row, at_col = _grid(mask, q)
  rows = q.shape[0]

  def dq_kernel(
    start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs
  ):
    range_refs, (dq_ref, acc_ref) = refs[: len(ranges)], refs[len(ranges) :]
    r, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(j < count_ref[walk.at(r, t)])
    def _():
      col = walk.column(r, t, j, start_ref, count_ref, idx_ref)
      seen = tile_math.visible_in_pair(
        tile, len_ref[walk.at(r, col)], col, tuple(_column_of(ref) for ref in range_refs)
      )
      acc_ref[...] = tile_math.dq_step(
        acc_ref[...],
        q_ref[...],
        k_ref[...],
        v_ref[...],
        do_ref[...],
        _column_of(lse_ref),
        _column_of(delta_ref),
        seen,
        scale,
      )

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
      dq_ref[...] = acc_ref[...].astype(dq_ref.dtype)

  return _call(
    dq_kernel,
    kind="dq",
    pattern=pattern,
    mask=mask,
    rows=rows,
    options=options,
    operands=(q, k, v, do, lse, delta, *ranges),
    in_specs=[
      tiles(at_row),
      tiles(at_col),
      tiles(at_col),
      tiles(at_row),
      scalars(at_row),
      scalars(at_row),
      *[scalars(at_row, meta=True)] * len(ranges),
    ],
    out_specs=tiles(at_row),
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    scratch=[pltpu.VMEM((tile, head_dim), _F32)],
  )


def _backward_dkdv(q, k, v, do, lse, delta, ranges, mask, scale, options, pattern):
  """dk, dv: the grid's rows are key tiles; the columns they visit are the query tiles that
  read them (the transposed mask)."""
  key_side = mask.transposed()
  walk, tile, head_dim, tiles, scalars, at_row, at_col = _grid(key_side, q)
  rows = q.shape[0]

  def dkdv_kernel(
    start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs
  ):
    range_refs, (dk_ref, dv_ref, dk_acc, dv_acc) = refs[: len(ranges)], refs[len(ranges) :]
    r, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _():
      dk_acc[...] = jnp.zeros_like(dk_acc)
      dv_acc[...] = jnp.zeros_like(dv_acc)

    @pl.when(j < count_ref[walk.at(r, t)])
    def _():
      col = walk.column(r, t, j, start_ref, count_ref, idx_ref)
      seen = tile_math.visible_in_pair(
        tile,
        len_ref[walk.at(r, t)],
        t,
        tuple(_column_of(ref) for ref in range_refs),
        q_len=len_ref[walk.at(r, col)],
      )
      dk_acc[...], dv_acc[...] = tile_math.dkdv_step(
        (dk_acc[...], dv_acc[...]),
        q_ref[...],
        k_ref[...],
        v_ref[...],
        do_ref[...],
        _column_of(lse_ref),
        _column_of(delta_ref),
        seen,
        scale,
      )

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
      dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
      dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)

  return _call(
    dkdv_kernel,
    kind="dkdv",
    pattern=pattern,
    mask=key_side,
    rows=rows,
    options=options,
    operands=(q, k, v, do, lse, delta, *ranges),
    in_specs=[
      tiles(at_col),
      tiles(at_row),
      tiles(at_row),
      tiles(at_col),
      scalars(at_col),
      scalars(at_col),
      *[scalars(at_col, meta=True)] * len(ranges),
    ],
    out_specs=[tiles(at_row), tiles(at_row)],
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    scratch=[pltpu.VMEM((tile, head_dim), _F32), pltpu.VMEM((tile, head_dim), _F32)],
  )


block_sparse_attention_tpu = flash_attention_vjp(_forward, _backward)
block_sparse_attention_tpu.__doc__ = (
  "q, k, v: [rows, num_tiles * tile, D]; mask: a BlockMask whose row count divides rows; "
  "(scale, options, pattern) static. Returns q's shape and dtype."
)


def prefetch_bytes_in_hlo(hlo_text: str) -> int:
  """The most scalar-prefetch (SMEM) bytes any one of this module's kernels takes in a compiled
  HLO module's text: the first _NUM_PREFETCH operands of each TPU custom call."""
  import re

  shapes = {}  # HLO value name -> its bytes, for s32/f32/u32 values
  for match in re.finditer(r"%([\w.\-]+) = ([su]32|f32)\[([\d,]*)\]", hlo_text):
    dims = [int(d) for d in match.group(3).split(",") if d]
    shapes[match.group(1)] = 4 * (int(np.prod(dims)) if dims else 1)
  most = 0
  for call in re.finditer(
    r"custom-call\(([^)]*)\), custom_call_target=\"tpu_custom_call\"", hlo_text
  ):
    names = [a.strip().lstrip("%") for a in call.group(1).split(",")][:_NUM_PREFETCH]
    names = [re.sub(r"^/\*index=\d+\*/", "", n).lstrip("%") for n in names]
    most = max(most, sum(shapes.get(n, 0) for n in names))
  return most
