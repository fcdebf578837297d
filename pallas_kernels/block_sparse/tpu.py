"""Block-sparse attention as Pallas Mosaic TPU kernels (forward, dq, dk/dv).

Grid (rows, query tiles, steps). The block mask arrives by scalar prefetch (SMEM) and drives the
key BlockSpec index maps: at step j a query tile's key/value block is its j-th key tile. Past a
tile's count the index map repeats the last block, which the pipeline does not fetch again, and
`pl.when` skips the compute, so skipped tiles are neither loaded nor computed. The step axis is
as long as the longest list (a traced grid bound, as in megablox), so routing can change every
step without recompiling. The dk/dv kernel walks the lists from the key side (the same lists for
symmetric masks, the mask's key-side runs for range masks, whose per-query key ranges arrive as
[tile, 1] blocks beside the queries). Tiles should be multiples of 128 on TPU hardware.

On a machine without a TPU the kernels run in Pallas interpret mode (`interpret=True`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse import tile_math
from pallas_kernels.block_sparse.flash_vjp import flash_attention_vjp
from pallas_kernels.metadata import BlockMask

_F32 = tile_math.F32
_NUM_PREFETCH = 4  # start, count, tile_len, indices


def _prefetch(mask: BlockMask):
  """Flat int32 arrays for SMEM; contiguous runs get a one-element dummy index list."""
  indices = jnp.zeros((1,), jnp.int32) if mask.indices is None else mask.indices.reshape(-1)
  return (mask.start.reshape(-1), mask.count.reshape(-1), mask.tile_len.reshape(-1), indices)


def _column(r, t, j, start_ref, count_ref, idx_ref, *, num_tiles: int, list_len: int | None):
  """The key (or, in dk/dv, query) tile visited at step j; the last one again past the count."""
  row_tile = r * num_tiles + t
  j = jnp.minimum(j, jnp.maximum(count_ref[row_tile] - 1, 0))
  if list_len is None:
    return start_ref[row_tile] + j
  return idx_ref[jnp.minimum(r * list_len + start_ref[row_tile] + j, idx_ref.shape[0] - 1)]


def _call(kernel, *, mask: BlockMask, in_specs, out_specs, out_shape, scratch, interpret,
          operands):
  rows, num_tiles = mask.start.shape
  steps = jnp.maximum(jnp.max(mask.count), 1)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=_NUM_PREFETCH, grid=(rows, num_tiles, steps), in_specs=in_specs,
      out_specs=out_specs, scratch_shapes=scratch)
  return pl.pallas_call(
      kernel, grid_spec=grid_spec, out_shape=out_shape, interpret=interpret,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
  )(*_prefetch(mask), *operands)


def _specs(mask: BlockMask, tile: int, head_dim: int):
  """BlockSpecs for tensors read at the row tile and at the visited column tile."""
  num_tiles = mask.start.shape[1]
  list_len = None if mask.indices is None else mask.indices.shape[-1]
  column = functools.partial(_column, num_tiles=num_tiles, list_len=list_len)

  def at_row(r, t, j, *refs):
    return (r, t, 0)

  def at_col(r, t, j, start_ref, count_ref, len_ref, idx_ref):
    return (r, column(r, t, j, start_ref, count_ref, idx_ref), 0)

  tiles = lambda index_map, width=head_dim: pl.BlockSpec((None, tile, width), index_map)
  return tiles, at_row, at_col, column


def _forward(q, k, v, mask: BlockMask, scale: float, interpret: bool):
  rows, length, head_dim = q.shape
  num_tiles = mask.start.shape[1]
  tile = length // num_tiles
  tiles, at_row, at_col, column = _specs(mask, tile, head_dim)
  ranges = mask.range_operands()

  def kernel(start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, *refs):
    range_refs, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = refs[:len(ranges)], refs[len(ranges):]
    r, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _():
      m_ref[...], l_ref[...], acc_ref[...] = tile_math.init_state(tile, head_dim)

    @pl.when(j < count_ref[r * num_tiles + t])
    def _():
      col = column(r, t, j, start_ref, count_ref, idx_ref)
      seen = tile_math.visible_in_pair(tile, len_ref[r * num_tiles + col], col,
                                        tuple(ref[...] for ref in range_refs))
      state = (m_ref[...], l_ref[...], acc_ref[...])
      m_ref[...], l_ref[...], acc_ref[...] = tile_math.attend(
          state, q_ref[...], k_ref[...], v_ref[...], seen, scale)

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
      o_ref[...], lse_ref[...] = tile_math.finish((m_ref[...], l_ref[...], acc_ref[...]),
                                                  o_ref.dtype)

  return _call(
      kernel, mask=mask, interpret=interpret, operands=(q, k, v, *ranges),
      in_specs=[tiles(at_row), tiles(at_col), tiles(at_col), *[tiles(at_row, 1)] * len(ranges)],
      out_specs=[tiles(at_row), tiles(at_row, 1)],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((rows, length, 1), _F32)],
      scratch=[pltpu.VMEM((tile, 1), _F32), pltpu.VMEM((tile, 1), _F32),
               pltpu.VMEM((tile, head_dim), _F32)])


def _backward(q, k, v, out, lse, do, mask: BlockMask, scale: float, interpret: bool):
  _, length, head_dim = q.shape
  num_tiles = mask.start.shape[1]
  tile = length // num_tiles
  tiles, at_row, at_col, column = _specs(mask, tile, head_dim)
  ranges = mask.range_operands()
  delta = jnp.sum(do.astype(_F32) * out.astype(_F32), axis=-1, keepdims=True)

  def dq_kernel(start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                delta_ref, *refs):
    range_refs, (dq_ref, acc_ref) = refs[:len(ranges)], refs[len(ranges):]
    r, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(j < count_ref[r * num_tiles + t])
    def _():
      col = column(r, t, j, start_ref, count_ref, idx_ref)
      seen = tile_math.visible_in_pair(tile, len_ref[r * num_tiles + col], col,
                                        tuple(ref[...] for ref in range_refs))
      acc_ref[...] = tile_math.dq_step(
          acc_ref[...], q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...],
          delta_ref[...], seen, scale)

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
      dq_ref[...] = acc_ref[...].astype(dq_ref.dtype)

  dq = _call(
      dq_kernel, mask=mask, interpret=interpret, operands=(q, k, v, do, lse, delta, *ranges),
      in_specs=[tiles(at_row), tiles(at_col), tiles(at_col), tiles(at_row),
                tiles(at_row, 1), tiles(at_row, 1), *[tiles(at_row, 1)] * len(ranges)],
      out_specs=tiles(at_row), out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      scratch=[pltpu.VMEM((tile, head_dim), _F32)])

  # Rows of this grid are key tiles; the columns they visit are the query tiles that read them.
  key_side = mask.transposed()
  tiles, at_row, at_col, column = _specs(key_side, tile, head_dim)

  def dkdv_kernel(start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                  delta_ref, *refs):
    range_refs, (dk_ref, dv_ref, dk_acc, dv_acc) = refs[:len(ranges)], refs[len(ranges):]
    r, t, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

    @pl.when(j == 0)
    def _():
      dk_acc[...] = jnp.zeros_like(dk_acc)
      dv_acc[...] = jnp.zeros_like(dv_acc)

    @pl.when(j < count_ref[r * num_tiles + t])
    def _():
      col = column(r, t, j, start_ref, count_ref, idx_ref)
      seen = tile_math.visible_in_pair(tile, len_ref[r * num_tiles + t], t,
                                        tuple(ref[...] for ref in range_refs),
                                        q_len=len_ref[r * num_tiles + col])
      dk_acc[...], dv_acc[...] = tile_math.dkdv_step(
          (dk_acc[...], dv_acc[...]), q_ref[...], k_ref[...], v_ref[...], do_ref[...],
          lse_ref[...], delta_ref[...], seen, scale)

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
      dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
      dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)

  dk, dv = _call(
      dkdv_kernel, mask=key_side, interpret=interpret,
      operands=(q, k, v, do, lse, delta, *ranges),
      in_specs=[tiles(at_col), tiles(at_row), tiles(at_row), tiles(at_col),
                tiles(at_col, 1), tiles(at_col, 1), *[tiles(at_col, 1)] * len(ranges)],
      out_specs=[tiles(at_row), tiles(at_row)],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      scratch=[pltpu.VMEM((tile, head_dim), _F32), pltpu.VMEM((tile, head_dim), _F32)])
  return dq, dk, dv


block_sparse_attention_tpu = flash_attention_vjp(_forward, _backward)
block_sparse_attention_tpu.__doc__ = (
    "q, k, v: [rows, num_tiles * tile, D]; mask: per-row BlockMask; (scale, interpret) static. "
    "Returns q's shape and dtype.")
