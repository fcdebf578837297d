"""Block-sparse attention as Pallas GPU kernels, Triton lowering (forward, dq, dk/dv).

Grid (query tiles, rows); each program keeps its query tile in registers and runs a
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

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.block_sparse import tile_math
from pallas_kernels.block_sparse.flash_vjp import flash_attention_vjp, kernel_name
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.metadata import BlockMask, visited_tile

_F32 = tile_math.F32


def _columns(mask: BlockMask):
  """column(r, t, j, start_ref, idx_ref) -> the tile visited at step j (j < count)."""
  num_tiles = mask.start.shape[1]
  list_len = None if mask.indices is None else mask.indices.shape[-1]

  def column(r, t, j, start_ref, idx_ref):
    start = start_ref[r * num_tiles + t]
    if list_len is None:
      return visited_tile(start, j)
    return visited_tile(start, j, idx_ref, r * list_len)

  return column


@dataclasses.dataclass(frozen=True)
class LaunchParams:
  """Triton launch parameters of one kernel."""

  num_warps: int = 4
  num_stages: int = 2


# Keys per dk/dv program. Measured with moga_jax.tools.gpu_compile (Triton IR -> PTX for sm_90a,
# ptxas -v, bf16): at 128 keys the dk/dv kernel spills at every warp / stage setting (8 warps:
# 0.2 KB per thread at head_dim 64, 1.2 KB at 128); with 64-key programs it does not.
DKDV_KEYS = 64


def launch_params(
  *, tile: int, head_dim: int, options: KernelOptions | None = None
) -> LaunchParams:
  """Warps and pipeline stages for every kernel (forward, dq, dk/dv) at a tile size.

  From the sweep in moga_jax/tools/gpu_compile.py (sm_90a, bf16, tile 128): at 4 warps every kernel
  spills registers (forward 1.3 KB per thread, dq 1.5 KB at head_dim 128); at 8 warps forward
  and dq do not. Two stages keep every kernel under the H100's 227 KiB of shared memory at
  head_dim 128 (three take dq to 256 KiB). Small tiles (at most 64 x 64 values) need only 4.
  """
  options = options or KernelOptions()
  return LaunchParams(
    num_warps=options.num_warps or (8 if tile * head_dim > 64 * 64 else 4),
    num_stages=options.num_stages or 2,
  )


def _call(
  kernel,
  *,
  name: str,
  mask: BlockMask,
  tile: int,
  head_dim: int,
  operands,
  row_tiled,
  out_shape,
  options: KernelOptions,
  block: int | None = None,
):
  """pallas_call over (tiles, rows): query (or key) tiles first, so that the programs running
  together read the same rows' K/V from L2. row_tiled[i] says whether operand i is cut to the
  program's own tile [tile, width] or left whole [rows, L, width] for the kernel to read the
  tiles on its list from (a pointer on GPU; no per-program copy in interpret mode either)."""
  rows, num_tiles = mask.start.shape
  block = block or tile  # a program's own block: its tile, or (dk/dv) a sub-block of it

  def spec(x, own_tile: bool):
    if own_tile:
      return pl.BlockSpec((None, block, x.shape[-1]), lambda t, r: (r, t, 0))
    return pl.no_block_spec

  in_specs = [pl.no_block_spec] * 4 + [
    spec(x, own) for x, own in zip(operands, row_tiled, strict=True)
  ]
  out_specs = [pl.BlockSpec((None, block, s.shape[-1]), lambda t, r: (r, t, 0)) for s in out_shape]
  params = launch_params(tile=tile, head_dim=head_dim, options=options)
  return pl.pallas_call(
    kernel,
    grid=(num_tiles * tile // block, rows),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    interpret=options.interpret,
    name=name,
    compiler_params=plgpu.CompilerParams(num_warps=params.num_warps, num_stages=params.num_stages),
  )(*mask.flat_metadata(), *operands)


def _ids():
  """(row, tile) of this program; the grid is (tiles, rows)."""
  return pl.program_id(1), pl.program_id(0)


def _tile_at(ref, r, col, tile):
  return ref[r, pl.ds(col * tile, tile), :]


def _sizes(q, mask: BlockMask) -> tuple[int, int, int, int]:
  """(rows, length, head_dim, tile) of a call over q with `mask`'s tiling."""
  rows, length, head_dim = q.shape
  return rows, length, head_dim, length // mask.start.shape[1]


def _forward(q, k, v, mask: BlockMask, scale: float, options: KernelOptions, pattern: str):
  rows, length, head_dim, tile = _sizes(q, mask)
  num_tiles = mask.start.shape[1]
  column = _columns(mask)
  ranges = mask.range_operands()

  def kernel(start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, *refs):
    range_refs, (o_ref, lse_ref) = refs[: len(ranges)], refs[len(ranges) :]
    r, t = _ids()
    q_tile = q_ref[...]
    own_ranges = tuple(ref[...] for ref in range_refs)

    def body(j, state):
      col = column(r, t, j, start_ref, idx_ref)
      seen = tile_math.visible_in_pair(tile, len_ref[r * num_tiles + col], col, own_ranges)
      return tile_math.attend(
        state, q_tile, _tile_at(k_ref, r, col, tile), _tile_at(v_ref, r, col, tile), seen, scale
      )

    state = lax.fori_loop(
      0, count_ref[r * num_tiles + t], body, tile_math.init_state(tile, head_dim)
    )
    o_ref[...], lse_ref[...] = tile_math.finish(state, o_ref.dtype)

  return _call(
    kernel,
    name=kernel_name(pattern, "fwd"),
    mask=mask,
    tile=tile,
    head_dim=head_dim,
    operands=(q, k, v, *ranges),
    row_tiled=(True, False, False, *(True,) * len(ranges)),
    options=options,
    out_shape=[
      jax.ShapeDtypeStruct(q.shape, q.dtype),
      jax.ShapeDtypeStruct((rows, length, 1), _F32),
    ],
  )


def _backward(
  q, k, v, out, lse, do, mask: BlockMask, scale: float, options: KernelOptions, pattern: str
):
  delta = tile_math.softmax_delta(do, out)
  args = (q, k, v, do, lse, delta, mask, scale, options, pattern)
  return (_backward_dq(*args), *_backward_dkdv(*args))


def _backward_dq(q, k, v, do, lse, delta, mask, scale, options, pattern):
  """dq: one program per query tile, looping over the key tiles the mask lets it read."""
  _, _, head_dim, tile = _sizes(q, mask)
  num_tiles = mask.start.shape[1]
  column = _columns(mask)
  ranges = mask.range_operands()

  def dq_kernel(
    start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs
  ):
    range_refs, (dq_ref,) = refs[: len(ranges)], refs[len(ranges) :]
    r, t = _ids()
    q_tile, do_tile, lse_tile, delta_tile = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    own_ranges = tuple(ref[...] for ref in range_refs)

    def body(j, dq):
      col = column(r, t, j, start_ref, idx_ref)
      seen = tile_math.visible_in_pair(tile, len_ref[r * num_tiles + col], col, own_ranges)
      return tile_math.dq_step(
        dq,
        q_tile,
        _tile_at(k_ref, r, col, tile),
        _tile_at(v_ref, r, col, tile),
        do_tile,
        lse_tile,
        delta_tile,
        seen,
        scale,
      )

    dq = lax.fori_loop(0, count_ref[r * num_tiles + t], body, jnp.zeros((tile, head_dim), _F32))
    dq_ref[...] = dq.astype(dq_ref.dtype)

  (dq,) = _call(
    dq_kernel,
    name=kernel_name(pattern, "dq"),
    mask=mask,
    tile=tile,
    head_dim=head_dim,
    operands=(q, k, v, do, lse, delta, *ranges),
    row_tiled=(True, False, False, True, True, True, *(True,) * len(ranges)),
    options=options,
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)],
  )
  return dq


def _backward_dkdv(q, k, v, do, lse, delta, mask, scale, options, pattern):
  """dk, dv: programs own key sub-blocks and loop over the query tiles that read them."""
  _, _, head_dim, tile = _sizes(q, mask)
  num_tiles = mask.start.shape[1]
  ranges = mask.range_operands()
  # Programs own `keys`-key sub-blocks of key tiles (split of them per tile: a whole 128-key
  # tile's dk, dv and their inputs spill registers, see launch_params); the tiles on their lists
  # are the query tiles that read that key tile.
  key_side = mask.transposed()
  column = _columns(key_side)
  keys = min(tile, DKDV_KEYS)
  split = tile // keys

  def dkdv_kernel(
    start_ref, count_ref, len_ref, idx_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs
  ):
    range_refs, (dk_ref, dv_ref) = refs[: len(ranges)], refs[len(ranges) :]
    r, block = _ids()
    t, shift = (block // split, (block % split) * keys) if split > 1 else (block, 0)
    k_block, v_block = k_ref[...], v_ref[...]
    key_len = jnp.clip(len_ref[r * num_tiles + t] - shift, 0, keys)

    def body(j, carry):
      col = column(r, t, j, start_ref, idx_ref)
      their_ranges = tuple(_tile_at(ref, r, col, tile) for ref in range_refs)
      seen = tile_math.visible_in_pair(
        tile,
        key_len,
        t,
        their_ranges,
        q_len=len_ref[r * num_tiles + col],
        keys=keys,
        key_shift=shift,
      )
      return tile_math.dkdv_step(
        carry,
        _tile_at(q_ref, r, col, tile),
        k_block,
        v_block,
        _tile_at(do_ref, r, col, tile),
        _tile_at(lse_ref, r, col, tile),
        _tile_at(delta_ref, r, col, tile),
        seen,
        scale,
      )

    zeros = jnp.zeros((keys, head_dim), _F32)
    dk, dv = lax.fori_loop(0, count_ref[r * num_tiles + t], body, (zeros, zeros))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)

  dk, dv = _call(
    dkdv_kernel,
    name=kernel_name(pattern, "dkdv"),
    mask=key_side,
    tile=tile,
    head_dim=head_dim,
    operands=(q, k, v, do, lse, delta, *ranges),
    row_tiled=(False, True, True, False, False, False, *(False,) * len(ranges)),
    options=options,
    block=keys,
    out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
  )
  return dk, dv


block_sparse_attention_gpu = flash_attention_vjp(_forward, _backward)
block_sparse_attention_gpu.__doc__ = (
  "q, k, v: [rows, num_tiles * tile, D]; mask: per-row BlockMask; (scale, options, "
  "pattern) static. "
  "Returns q's shape and dtype."
)
