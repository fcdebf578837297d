"""Block-sparse attention as Pallas GPU kernels, Triton lowering (forward, dq, dk/dv).

Grid (rows, query tiles); each program keeps its query tile in registers and runs a
`fori_loop` whose trip count is the tile's count from the block mask, loading only the key tiles
on its list. Unlike the Pallas `mha` kernel, which loops over every key block and masks, work
here follows the mask. The dk/dv kernel walks the same lists from the key side (block masks are
symmetric), so no atomics are needed.

Why Triton and not Mosaic GPU: the Triton lowering runs on Ampere and Hopper with every JAX we
support (0.10.2 to 0.12), and it can be tested on CPU in interpret mode. It is deprecated from
JAX 0.11; a Mosaic GPU (sm90+) port of the same contract is the follow-up.

On a machine without a GPU the kernels run in Pallas interpret mode (`interpret=True`). On GPU
hardware tile and head_dim must be powers of two, at least 16 (Triton block shapes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.block_sparse import tile_math
from pallas_kernels.block_sparse.flash_vjp import flash_attention_vjp
from pallas_kernels.metadata import BlockMask

_F32 = tile_math.F32


def _metadata(mask: BlockMask):
  indices = jnp.zeros((1,), jnp.int32) if mask.indices is None else mask.indices.reshape(-1)
  return (mask.start.reshape(-1), mask.count.reshape(-1), mask.tile_len.reshape(-1), indices)


def _columns(mask: BlockMask):
  """column(r, t, j, start_ref, idx_ref) -> the tile visited at step j (j < count)."""
  num_tiles = mask.start.shape[1]
  list_len = None if mask.indices is None else mask.indices.shape[-1]

  def column(r, t, j, start_ref, idx_ref):
    if list_len is None:
      return start_ref[r * num_tiles + t] + j
    return idx_ref[r * list_len + start_ref[r * num_tiles + t] + j]

  return column


def _call(kernel, *, mask: BlockMask, tile: int, head_dim: int, operands, row_tiled,
          out_shape, interpret: bool):
  """pallas_call over (rows, tiles). row_tiled[i] says whether operand i is cut to the
  program's own tile [tile, width] or left whole [rows, L, width] for the kernel to read the
  tiles on its list from (a pointer on GPU; no per-program copy in interpret mode either)."""
  rows, num_tiles = mask.start.shape

  def spec(x, own_tile: bool):
    if own_tile:
      return pl.BlockSpec((None, tile, x.shape[-1]), lambda r, t: (r, t, 0))
    return pl.no_block_spec

  in_specs = [pl.no_block_spec] * 4 + [spec(x, own) for x, own in zip(operands, row_tiled,
                                                                  strict=True)]
  out_specs = [pl.BlockSpec((None, tile, s.shape[-1]), lambda r, t: (r, t, 0))
               for s in out_shape]
  return pl.pallas_call(
      kernel, grid=(rows, num_tiles), in_specs=in_specs, out_specs=out_specs,
      out_shape=out_shape, interpret=interpret,
      compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
  )(*_metadata(mask), *operands)


def _tile_at(ref, r, col, tile):
  return ref[r, pl.ds(col * tile, tile), :]


def _forward(q, k, v, mask: BlockMask, scale: float, interpret: bool):
  rows, length, head_dim = q.shape
  num_tiles = mask.start.shape[1]
  tile = length // num_tiles
  column = _columns(mask)
  ranges = mask.range_operands()

  def kernel(start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, *refs):
    range_refs, (o_ref, lse_ref) = refs[:len(ranges)], refs[len(ranges):]
    r, t = pl.program_id(0), pl.program_id(1)
    q_tile = q_ref[...]
    own_ranges = tuple(ref[...] for ref in range_refs)

    def body(j, state):
      col = column(r, t, j, start_ref, idx_ref)
      seen = tile_math.visible_in_pair(tile, len_ref[r * num_tiles + col], col, own_ranges)
      return tile_math.attend(state, q_tile, _tile_at(k_ref, r, col, tile),
                              _tile_at(v_ref, r, col, tile), seen, scale)

    state = lax.fori_loop(0, count_ref[r * num_tiles + t], body,
                          tile_math.init_state(tile, head_dim))
    o_ref[...], lse_ref[...] = tile_math.finish(state, o_ref.dtype)

  return _call(kernel, mask=mask, tile=tile, head_dim=head_dim, operands=(q, k, v, *ranges),
               row_tiled=(True, False, False, *(True,) * len(ranges)), interpret=interpret,
               out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                          jax.ShapeDtypeStruct((rows, length, 1), _F32)])


def _backward(q, k, v, out, lse, do, mask: BlockMask, scale: float, interpret: bool):
  _, length, head_dim = q.shape
  num_tiles = mask.start.shape[1]
  tile = length // num_tiles
  column = _columns(mask)
  ranges = mask.range_operands()
  delta = jnp.sum(do.astype(_F32) * out.astype(_F32), axis=-1, keepdims=True)

  def dq_kernel(start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                delta_ref, *refs):
    range_refs, (dq_ref,) = refs[:len(ranges)], refs[len(ranges):]
    r, t = pl.program_id(0), pl.program_id(1)
    q_tile, do_tile, lse_tile, delta_tile = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    own_ranges = tuple(ref[...] for ref in range_refs)

    def body(j, dq):
      col = column(r, t, j, start_ref, idx_ref)
      seen = tile_math.visible_in_pair(tile, len_ref[r * num_tiles + col], col, own_ranges)
      return tile_math.dq_step(dq, q_tile, _tile_at(k_ref, r, col, tile),
                               _tile_at(v_ref, r, col, tile), do_tile, lse_tile, delta_tile,
                               seen, scale)

    dq = lax.fori_loop(0, count_ref[r * num_tiles + t], body,
                       jnp.zeros((tile, head_dim), _F32))
    dq_ref[...] = dq.astype(dq_ref.dtype)

  (dq,) = _call(dq_kernel, mask=mask, tile=tile, head_dim=head_dim,
                operands=(q, k, v, do, lse, delta, *ranges),
                row_tiled=(True, False, False, True, True, True, *(True,) * len(ranges)),
                interpret=interpret, out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)])

  # Programs own key tiles; the tiles on their lists are the query tiles that read them.
  key_side = mask.transposed()
  column = _columns(key_side)

  def dkdv_kernel(start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                  delta_ref, *refs):
    range_refs, (dk_ref, dv_ref) = refs[:len(ranges)], refs[len(ranges):]
    r, t = pl.program_id(0), pl.program_id(1)
    k_tile, v_tile, key_len = k_ref[...], v_ref[...], len_ref[r * num_tiles + t]

    def body(j, carry):
      col = column(r, t, j, start_ref, idx_ref)
      their_ranges = tuple(_tile_at(ref, r, col, tile) for ref in range_refs)
      seen = tile_math.visible_in_pair(tile, key_len, t, their_ranges,
                                       q_len=len_ref[r * num_tiles + col])
      return tile_math.dkdv_step(
          carry, _tile_at(q_ref, r, col, tile), k_tile, v_tile, _tile_at(do_ref, r, col, tile),
          _tile_at(lse_ref, r, col, tile), _tile_at(delta_ref, r, col, tile), seen, scale)

    zeros = jnp.zeros((tile, head_dim), _F32)
    dk, dv = lax.fori_loop(0, count_ref[r * num_tiles + t], body, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)

  dk, dv = _call(dkdv_kernel, mask=key_side, tile=tile, head_dim=head_dim,
                 operands=(q, k, v, do, lse, delta, *ranges),
                 row_tiled=(False, True, True, False, False, False, *(False,) * len(ranges)),
                 interpret=interpret,
                 out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                            jax.ShapeDtypeStruct(v.shape, v.dtype)])
  return dq, dk, dv


block_sparse_attention_gpu = flash_attention_vjp(_forward, _backward)
block_sparse_attention_gpu.__doc__ = (
    "q, k, v: [rows, num_tiles * tile, D]; mask: per-row BlockMask; (scale, interpret) static. "
    "Returns q's shape and dtype.")
