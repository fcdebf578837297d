"""STGA (shot-aware spatial-temporal group attention) and per-frame attention, MoGA's two
static branches (the paper's Sec. 3.2), on the one block-sparse contract."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from pallas_kernels import validation
from pallas_kernels.block_sparse.dispatch import resolve
from pallas_kernels.block_sparse.layout_ops import AttentionPattern, attend_pattern
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.block_sparse.reference import shot_window_attention_reference
from pallas_kernels.metadata import WorkShare, shot_window_layout, shot_window_order


def shot_window_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  shot_ids: jax.Array,
  *,
  grid_shape: tuple[int, int, int],
  spatial_groups: tuple[int, int] = (2, 2),
  temporal_group: int | None = None,
  context_frames: int = 1,
  scale: float | None = None,
  implementation: str | None = None,
  interpret=None,
  tile: int | None = None,
  backend: str | None = None,
  options: KernelOptions | Mapping | None = None,
  share: WorkShare | tuple | None = None,
  check_ids: bool = False,
) -> jax.Array:
  """Attention inside fixed spatial windows x temporal groups that never span a shot cut.

  Tokens are in raster (t, h, w) order over grid_shape = (T, H, W). Exact semantics (our
  reading of the paper's Sec. 3.2 where it is terse):
  - spatial window of token (t, h, w): (h * sh // H, w * sw // W) for spatial_groups = (sh,
    sw), an even split (windows differ by at most one row or column where H or W does not
    divide);
  - temporal groups: each maximal run of frames with the same shot id; with temporal_group=L,
    each run is further cut into pieces of L frames counted from the run's first frame;
  - a query attends to every key of its own (temporal group, spatial window) and, in the same
    window, to the last `context_frames` latent frames of the previous temporal group and the
    first `context_frames` of the next one, where they exist (fewer if that group is
    shorter). Only keys and values are augmented, never queries; context_frames=0: none.
  The paper adds "two latent frames of the adjacent shots" to K/V; we read that as one frame
  on each side (context_frames=1).

  Shot boundaries are data: they may differ per batch element and change every call without a
  recompile (the key ranges are computed on device). Cost follows the visited tile pairs,
  about N x (window tokens per frame) x (frames per group + 2 x context_frames), not N^2.

  Args:
    q, k, v: [batch, T * H * W, heads, head_dim], one floating dtype.
    shot_ids: int [batch, T], the shot of each latent frame, non-decreasing along T (checked
      when concrete; traced ids are cut into runs of equal values, unless `check_ids`).
    grid_shape: (T, H, W). spatial_groups: (sh, sw), 1 <= sh <= H, 1 <= sw <= W.
    temporal_group: None (a group is a whole shot) or the most frames per group.
    context_frames: frames of each adjacent group added to the keys, >= 0.
    scale, implementation, interpret, backend, options: as in `group_attention`.
    tile: tokens per tile (default as in `group_attention`: 128, less for short sequences or
      where the compiled GPU kernel needs it).
    share: a `WorkShare(index, count)`: compute only the queries of share `index`, a
      contiguous run of the window-major order (windows, then frames: `shot_window_order`),
      and return 0 for the other tokens; the `count` shares add up to the whole.
    check_ids: True adds a `jax.experimental.checkify` check that traced shot_ids are
      non-decreasing (as in `group_attention`: wrap the caller in `checkify.checkify`).

  Returns:
    [batch, seq, heads, head_dim] in q.dtype. Differentiable in q, k and v.
  """
  batch, seq, _, head_dim = validation.check_qkv(q, k, v)
  grid_shape = validation.check_int_triple("grid_shape", grid_shape)
  if math.prod(grid_shape) != seq:
    raise ValueError(
      f"grid_shape {grid_shape} holds {math.prod(grid_shape)} tokens but q has "
      f"seq = {seq} (q shape {tuple(q.shape)}); need T * H * W == seq"
    )
  spatial_groups = validation.check_spatial_groups(spatial_groups, grid_shape)
  if temporal_group is not None:
    temporal_group = validation.check_positive_int("temporal_group", temporal_group)
  context_frames = validation.check_int("context_frames", context_frames, minimum=0)
  shot_ids = validation.check_shot_ids(
    shot_ids, batch=batch, frames=grid_shape[0], check_ids=check_ids
  )
  scale = validation.check_scale(scale, head_dim)
  share = validation.check_share(share)
  resolved = resolve(
    implementation, x=q, tile=tile, interpret=interpret, backend=backend, options=options
  )
  pattern = ShotWindows(grid_shape, spatial_groups, temporal_group, context_frames)
  return attend_pattern(pattern, q, k, v, shot_ids, scale=scale, resolved=resolved, share=share)


def frame_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  grid_shape: tuple[int, int, int],
  scale: float | None = None,
  implementation: str | None = None,
  interpret=None,
  tile: int | None = None,
  backend: str | None = None,
  options: KernelOptions | Mapping | None = None,
  share: WorkShare | tuple | None = None,
) -> jax.Array:
  """Full attention among the tokens of each latent frame (the paper's third branch).

  q, k, v: [batch, T * H * W, heads, head_dim] in raster (t, h, w) order. The same op as
  `shot_window_attention` with one window per frame, one-frame temporal groups and no context
  frames; other arguments as there (a share is a contiguous run of tokens).
  """
  batch = validation.check_qkv(q, k, v)[0]
  grid_shape = validation.check_int_triple("grid_shape", grid_shape)
  one_shot = jnp.zeros((batch, grid_shape[0]), jnp.int32)
  return shot_window_attention(
    q,
    k,
    v,
    one_shot,
    grid_shape=grid_shape,
    spatial_groups=(1, 1),
    temporal_group=1,
    context_frames=0,
    scale=scale,
    implementation=implementation,
    interpret=interpret,
    tile=tile,
    backend=backend,
    options=options,
    share=share,
  )


@dataclasses.dataclass(frozen=True)
class ShotWindows(AttentionPattern):
  """Tokens in (spatial window, t, h, w) order: every query's keys are one contiguous run of
  slots, computed on device from the shot ids. A share owns a contiguous run of query slots."""

  grid_shape: tuple[int, int, int]
  spatial_groups: tuple[int, int]
  temporal_group: int | None
  context_frames: int

  @property
  def name(self) -> str:
    per_frame = (self.spatial_groups, self.temporal_group, self.context_frames) == ((1, 1), 1, 0)
    return "frame" if per_frame else "stga"

  def _static(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def layout(self, shot_ids, *, tile, share):
    return shot_window_layout(shot_ids, tile=tile, share=share, **self._static())

  def reference(self, q, k, v, shot_ids, *, scale):
    return shot_window_attention_reference(q, k, v, shot_ids, scale=scale, **self._static())

  def owned(self, share, shot_ids, *, seq, tile):
    slot = jnp.asarray(shot_window_order(self.grid_shape, self.spatial_groups, tile).slot[0])
    return share.owns_slot(slot, seq)[None, :, None, None]
