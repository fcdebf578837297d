"""`window_attention`: attention inside tile-aligned 3D windows of a (T, H, W) token grid."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax

from pallas_kernels import validation
from pallas_kernels.block_sparse.dispatch import resolve
from pallas_kernels.block_sparse.layout_ops import AttentionPattern, attend_pattern
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.block_sparse.reference import window_attention_reference
from pallas_kernels.metadata import window_layout


def window_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  grid_shape: tuple[int, int, int],
  tile: tuple[int, int, int],
  window: tuple[int, int, int],
  scale: float | None = None,
  implementation: str | None = None,
  interpret=None,
  backend: str | None = None,
  options: KernelOptions | Mapping | None = None,
) -> jax.Array:
  """Local spatiotemporal attention, STA-style: whole tiles see whole tiles.

  Tokens are in raster (t, h, w) order over grid_shape = (T, H, W). A token's tile coordinate is
  (t // tile[0], h // tile[1], w // tile[2]), and a query attends to every key whose tile
  coordinate differs by at most window[a] // 2 on each axis a. Grid sizes need not be divisible
  by the tile (edge tiles are partial). Internally tokens are reordered into tiles, the
  block-sparse kernel runs with a host-built, static block mask, and raster order is restored.

  Args:
    q, k, v: [batch, T * H * W, heads, head_dim], one floating dtype.
    grid_shape, tile, window: (t, h, w) triples of positive ints. For the Pallas kernels on
      hardware, tokens per tile (the product of `tile`) should be a multiple of 128 on TPU and
      a power of two on GPU.
    scale, implementation, interpret, backend, options: as in `group_attention`.

  Returns:
    [batch, seq, heads, head_dim] in q.dtype. Differentiable in q, k and v.
  """
  _, seq, _, head_dim = validation.check_qkv(q, k, v)
  grid_shape = validation.check_int_triple("grid_shape", grid_shape)
  tile = validation.check_int_triple("tile", tile)
  window = validation.check_int_triple("window", window)
  if math.prod(grid_shape) != seq:
    raise ValueError(
      f"grid_shape {grid_shape} holds {math.prod(grid_shape)} tokens but q has "
      f"seq = {seq} (q shape {tuple(q.shape)}); need T * H * W == seq"
    )
  scale = validation.check_scale(scale, head_dim)
  resolved = resolve(
    implementation, x=q, tile=math.prod(tile), interpret=interpret, backend=backend, options=options
  )
  return attend_pattern(Windows(grid_shape, tile, window), q, k, v, scale=scale, resolved=resolved)


@dataclasses.dataclass(frozen=True)
class Windows(AttentionPattern):
  """A (T, H, W) grid cut into 3D tiles, each visiting the tiles within `window` of it: a
  static, host-built layout (no data operands, no shares)."""

  grid_shape: tuple[int, int, int]
  tile: tuple[int, int, int]
  window: tuple[int, int, int]
  name = "window"

  def layout(self, *, tile, share):
    del tile, share  # tokens per tile: the product of self.tile
    return window_layout(self.grid_shape, self.tile, self.window)

  def reference(self, q, k, v, *, scale):
    return window_attention_reference(
      q, k, v, grid_shape=self.grid_shape, tile=self.tile, window=self.window, scale=scale
    )
