"""MoGAAttention: the drop-in Flax NNX visual self-attention block of the MoGA paper."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moga_jax.model.config import AttentionConfig, head_dim_of
from moga_jax.model.remat import tag_qkv
from moga_jax.model.rope import apply_rope, rope_angles_traced
from moga_jax.model.routing import GroupRouter, routed_group_attention
from moga_jax.parallel.axes import ACTIVATION_BATCH, ACTIVATION_HEADS, ACTIVATION_LENGTH
from moga_jax.parallel.sequence_parallel import ulysses
from moga_jax.parallel.sharding import ShardingRules, constrain
from pallas_kernels import frame_attention, shot_window_attention, window_attention
from pallas_kernels.common import check_int_triple, check_positive_int


class MoGAAttention(nnx.Module):
  """Self-attention for tokens on a (T, H, W) grid: the paper's visual attention block.

  out = o( mean( gate * GroupAttention, STGA, FrameAttention ) ) (Sec. 3.2): every token gets
  the outputs of one dynamic group (MoGA: routed by one linear layer, top-1, full attention
  inside the group, scaled by the routing probability) and two static ones (STGA: its spatial
  window x temporal group, never across a shot cut except for the context frames; and its own
  latent frame), averaged. q/k are RMS-normed over the full inner width and rotated by 3D RoPE
  (Wan 2.1's layout: separate q, k, v, o linears, so its weights map one to one). The router
  reads the block's input features, once per token, shared by the heads.

  Args:
    dim: model width. num_heads, head_dim: attention heads (head_dim defaults to dim // heads).
    config: the branches and kernel settings, an `AttentionConfig` (None: its defaults, the
      paper's block with M = 5); keyword settings (`num_groups=20, stga_windows=(4, 4)`, ...:
      its field names) override it. With every branch off (`**DENSE`) the block is plain
      dense attention.
    rules: logical sharding rules. With them and a mesh set (`jax.set_mesh`), attention runs
      Ulysses-parallel: sequence-sharded inputs, whole sequences per device for a slice of the
      heads inside `jax.shard_map` (see `sequence_parallel.py`). None: no sharding annotations.
    dtype, param_dtype: compute and storage dtypes of the projections and norms (the router
      and the softmax statistics stay float32).
    checkpoint_branches: run each attention branch as a checkpoint of its own
      (`jax.checkpoint`), so that the backward pass of a rematerialised block recomputes and
      holds one branch's packed layout at a time instead of all of them (the DiT sets it under
      remat). Same result; costs each branch's forward once more in the backward pass.

  Call: `out, balance_loss = attn(x, grid_shape=(T, H, W), frame_shot=shots)` with x
  [B, T*H*W, dim] and shots int [B, T], the shot of every latent frame, non-decreasing (None:
  one shot); or `attn(x, frame_shot=shots)` with a latent grid x [B, T, H, W, dim] (the grid
  from its shape, `out` in the same shape). The balancing loss is an explicit output (0
  without MoGA) so that it survives jit, scan and remat without collections; the model sums it
  into the training loss.

  Bad input raises before anything is traced, naming this module's arguments (`x`,
  `grid_shape`, `frame_shot`, `stga_windows`): a channel width other than `dim`, batch 0,
  per-head or channels-first layouts, and float64. float64 is refused rather than computed:
  every attention path accumulates in float32, so float64 would come back as float64 computed
  in float32. Cast x to float32, or build the module with `dtype=jnp.float32` (the projections
  then cast x, and out is float32).
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    config: AttentionConfig | None = None,
    head_dim: int | None = None,
    rules: ShardingRules | None = None,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    checkpoint_branches: bool = False,
    rngs: nnx.Rngs,
    **settings,
  ):
    check_positive_int("dim", dim)
    check_positive_int("num_heads", num_heads)
    if head_dim is None:
      head_dim = head_dim_of(dim, num_heads)  # when head_dim is not given
    check_positive_int("head_dim", head_dim)
    c = AttentionConfig.of(config)
    c = c.replace(**settings) if settings else c
    self.config = c
    self.dim, self.dtype = dim, dtype
    self.num_heads, self.head_dim, self.num_groups = num_heads, head_dim, c.num_groups
    self.stga_windows, self.stga_temporal_group = c.stga_windows, c.stga_temporal_group
    self.stga_context_frames, self.frame_attention = c.stga_context_frames, c.frame_attention
    self.window, self.window_tile, self.group_tile = c.window, c.window_tile, c.group_tile
    self.combine, self.rope_theta = c.combine, c.rope_theta
    self.implementation, self.interpret = c.implementation, c.interpret
    self.kernel_options = c.kernel_options
    # Set True to keep every call's routing as an nnx.Intermediate "routing" (group ids and
    # probabilities), for analysis: `nnx.pop(model, nnx.Intermediate)` after the call.
    self.record_routing = False
    self.rules, self.checkpoint_branches = rules, checkpoint_branches
    inner = num_heads * head_dim
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q, self.k, self.v, self.o = (
      linear(dim, inner),
      linear(dim, inner),
      linear(dim, inner),
      linear(inner, dim),
    )
    norm = lambda: nnx.RMSNorm(inner, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm_q, self.norm_k = (norm(), norm()) if c.qk_norm else (None, None)
    self.router = (
      None
      if c.num_groups is None
      else GroupRouter(
        dim,
        c.num_groups,
        num_heads=num_heads if c.per_head_router else None,
        top_k=c.top_k,
        # Routing stays in float32 whatever `dtype`: its argmax and gate p(g|x) decide groups.
        balance=c.balance_loss,
        dtype=jnp.float32,
        param_dtype=param_dtype,
        rngs=rngs,
      )
    )

  @property
  def branches(self) -> tuple[str, ...]:
    """The branches this block averages (or sums), in order; () means dense attention."""
    on = (
      ("moga", self.router is not None),
      ("stga", self.stga_windows is not None),
      ("frame", self.frame_attention),
      ("window", self.window is not None),
    )
    return tuple(name for name, enabled in on if enabled)

  def __call__(
    self,
    x: jax.Array,
    *,
    grid_shape: tuple[int, int, int] | None = None,
    frame_shot: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    video_shape = tuple(x.shape) if getattr(x, "ndim", None) == 5 else None
    grid_shape = self._check_input(x, grid_shape)
    frame_shot = self._check_frame_shot(frame_shot, x.shape[0], grid_shape)
    if video_shape is not None:  # [B, T, H, W, C] -> raster (t, h, w) tokens
      x = x.reshape(x.shape[0], -1, x.shape[-1])
    batch, seq, _ = x.shape
    q, k, v = self.q(x), self.k(x), self.v(x)
    if self.norm_q is not None:
      q, k = self.norm_q(q), self.norm_k(k)
    heads = lambda t: constrain(
      t.reshape(batch, seq, self.num_heads, self.head_dim),
      self.rules,
      ACTIVATION_BATCH,
      ACTIVATION_LENGTH,
      ACTIVATION_HEADS,
      None,
    )
    angles = rope_angles_traced(grid_shape, self.head_dim, self.rope_theta)
    q, k, v = (
      tag_qkv(t) for t in (apply_rope(heads(q), angles), apply_rope(heads(k), angles), heads(v))
    )

    # Routing is per token, so it runs sequence-sharded like the projections; the balance loss
    # (a mean over all tokens) is taken here too. Only ids and gates cross into attention.
    routing = None if self.router is None else self.router(x)
    if routing is not None and self.record_routing:
      self.sow(nnx.Intermediate, "routing", (routing.group_ids, routing.probs))
    routed = () if routing is None else (routing.group_ids, routing.gates)
    per_head = routing is not None and routing.group_ids.ndim == 4
    attend = functools.partial(self._attend, grid_shape=grid_shape, routed=len(routed))
    out = ulysses(
      attend,
      self.rules,
      per_head=(q, k, v, *(routed if per_head else ())),
      per_token=() if per_head else routed,
      per_sample=(frame_shot.astype(jnp.int32),),
    )
    balance = jnp.zeros((), jnp.float32) if routing is None else routing.balance_loss
    out = self.o(out.reshape(batch, seq, -1))
    if video_shape is not None:
      out = out.reshape(video_shape)
    return out, balance

  def _check_input(self, x, grid_shape) -> tuple[int, int, int]:
    """Checks x against the module (shape, width, dtype) and returns the (T, H, W) grid."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise TypeError(f"x must be an array, got {type(x).__name__}")
    shape, dim = tuple(x.shape), self.dim
    layouts = f"[batch, T*H*W, dim={dim}] (with grid_shape) or [batch, T, H, W, dim={dim}]"
    if len(shape) == 4 and shape[1] == self.num_heads and shape[3] == self.head_dim:
      raise ValueError(
        f"x must be the block's input features {layouts}, got shape {shape}: per-head, "
        f"heads-first [batch, heads={self.num_heads}, tokens, head_dim={self.head_dim}]? "
        "MoGAAttention makes q, k and v from x itself (for per-head q, k, v use the ops: "
        "pallas_kernels.group_attention, shot_window_attention)"
      )
    if len(shape) == 5 and shape[1] == dim and shape[-1] != dim:
      raise ValueError(
        f"x must be channels-last [batch, T, H, W, dim={dim}], got shape {shape}: channels "
        "first (PyTorch's [B, C, F, H, W])? Move them last: jnp.moveaxis(x, 1, -1)"
      )
    if len(shape) not in (3, 5):
      raise ValueError(f"x must have shape {layouts}, got shape {shape} ({len(shape)} dims)")
    if shape[-1] != dim:
      raise ValueError(
        f"x must have the module's dim={dim} channels on its last axis, got shape {shape} "
        f"({shape[-1]} channels)"
      )
    if shape[0] == 0:
      raise ValueError(f"x must hold at least one batch element, got shape {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if jnp.dtype(x.dtype).itemsize > 4 and self.dtype is None:
      raise TypeError(
        f"x is {x.dtype}, but MoGAAttention computes in float32 at most (float64 would come "
        "back computed in float32): cast x to float32, or build the module with "
        "dtype=jnp.float32 to compute in float32 and return float32"
      )
    if len(shape) == 5:
      if grid_shape is not None and tuple(grid_shape) != shape[1:4]:
        raise ValueError(
          f"grid_shape must be x's (T, H, W) = {shape[1:4]} for x of shape [batch, T, H, W, "
          f"dim] = {shape} (or left out), got {tuple(grid_shape)}"
        )
      grid = shape[1:4]
    elif grid_shape is None:
      raise ValueError(
        f"grid_shape=(T, H, W) is needed for x of shape [batch, T*H*W, dim] = {shape} (or "
        "pass x as [batch, T, H, W, dim])"
      )
    else:
      grid = check_int_triple("grid_shape", tuple(grid_shape))
      if math.prod(grid) != shape[1]:
        raise ValueError(
          f"grid_shape must be (T, H, W) with T * H * W == x's tokens ({shape[1]}, x shape "
          f"{shape}), got {grid}"
        )
    if self.stga_windows is not None and not (
      self.stga_windows[0] <= grid[1] and self.stga_windows[1] <= grid[2]
    ):
      raise ValueError(
        f"stga_windows={self.stga_windows} must be at most the frame's (H, W) = "
        f"{tuple(grid[1:])} tokens (grid_shape {grid})"
      )
    return grid

  @staticmethod
  def _check_frame_shot(frame_shot, batch: int, grid: tuple[int, int, int]) -> jax.Array:
    """frame_shot as int32 [batch, T]: zeros (one shot) for None; checked as `frame_shot`."""
    if frame_shot is None:
      return jnp.zeros((batch, grid[0]), jnp.int32)
    if not hasattr(frame_shot, "shape") or not hasattr(frame_shot, "dtype"):
      raise TypeError(f"frame_shot must be an integer array, got {type(frame_shot).__name__}")
    if not jnp.issubdtype(frame_shot.dtype, jnp.integer):
      raise TypeError(f"frame_shot must have an integer dtype (int32), got {frame_shot.dtype}")
    if tuple(frame_shot.shape) != (batch, grid[0]):
      raise ValueError(
        f"frame_shot must have shape [batch, T] = {(batch, grid[0])} (the "
        f"shot of each latent frame), got {tuple(frame_shot.shape)}"
      )
    if not isinstance(frame_shot, jax.core.Tracer):
      steps = np.diff(np.asarray(frame_shot), axis=1)
      if (steps < 0).any():
        b, t = (int(i) for i in np.argwhere(steps < 0)[0])
        raise ValueError(
          f"frame_shot must be non-decreasing along the frames; batch element {b} goes from "
          f"{int(frame_shot[b, t])} to {int(frame_shot[b, t + 1])} at frame {t + 1}"
        )
    return frame_shot

  def _attend(self, q, k, v, *rest, grid_shape, routed: int, share=None):
    """The branches over whole sequences: q, k, v [B, N, h, D] for the heads this device holds;
    rest = (group_ids, gates) when routed, then the frames' shots [B, T]. share: this device's
    `WorkShare` of every branch (context parallelism past the head count), or None.

    With `head_chunk` the heads go through `head_chunk` at a time (`lax.map`), each chunk a
    checkpoint: the whole-sequence buffers of the branches (packed layouts, outputs, their
    gradients) are then held for one chunk of heads at a time."""
    attend = functools.partial(
      self._attend_heads, grid_shape=grid_shape, routed=routed, share=share
    )
    heads, chunk = q.shape[2], self.config.head_chunk
    if chunk is None or chunk >= heads:
      return attend(q, k, v, *rest)
    if heads % chunk:
      raise ValueError(
        f"head_chunk ({chunk}) must divide the {heads} heads each device holds in attention "
        f"(num_heads {self.num_heads} / the mesh's context x tensor axes)"
      )
    per_head = routed and rest[0].ndim == 4  # per-head routing: ids and gates [B, N, h, k]
    stacked, fixed = ((q, k, v, *rest[:2]), rest[2:]) if per_head else ((q, k, v), rest)
    count = heads // chunk
    split = lambda x: jnp.moveaxis(x.reshape(*x.shape[:2], count, chunk, *x.shape[3:]), 2, 0)
    body = jax.checkpoint(lambda arrays: attend(*arrays, *fixed))
    out = jax.lax.map(body, tuple(split(x) for x in stacked))  # [count, B, N, chunk, D]
    return jnp.moveaxis(out, 0, 2).reshape(*q.shape[:3], -1)

  def _attend_heads(self, q, k, v, *rest, grid_shape, routed: int, share=None):
    """`_attend` for all the heads it is given at once."""
    ops = dict(
      implementation=self.implementation, interpret=self.interpret, options=self.kernel_options
    )
    if share is not None:
      if not self.branches or self.window is not None:
        raise ValueError(
          "the mesh's 'share' axis splits attention by MoGA's groups, STGA's windows and "
          "frames; dense attention and the 3D window branch cannot be shared: set "
          f"sharding.mesh.share=1 (this block's branches: {self.branches or 'dense'})"
        )
      ops["share"] = share
    routing, frame_shot = rest[:routed], rest[routed]
    # (function of q, k, v and its own arrays, those arrays): a branch's arrays are arguments,
    # not closures, so that a checkpoint around it sees them.
    branches = []
    if routing:
      attend = lambda q, k, v, ids, gates: routed_group_attention(
        q, k, v, ids, gates, num_groups=self.num_groups, tile=self.group_tile, **ops
      )
      branches.append((attend, routing))
    if self.stga_windows is not None:
      attend = lambda q, k, v, shots: shot_window_attention(
        q,
        k,
        v,
        shots,
        grid_shape=grid_shape,
        spatial_groups=self.stga_windows,
        temporal_group=self.stga_temporal_group,
        context_frames=self.stga_context_frames,
        **ops,
      )
      branches.append((attend, (frame_shot,)))
    if self.frame_attention:
      attend = lambda q, k, v: frame_attention(q, k, v, grid_shape=grid_shape, **ops)
      branches.append((attend, ()))
    if self.window is not None:
      attend = lambda q, k, v: window_attention(
        q, k, v, grid_shape=grid_shape, tile=self.window_tile, window=self.window, **ops
      )
      branches.append((attend, ()))
    wrap = jax.checkpoint if self.checkpoint_branches else lambda f: f
    outputs = [wrap(attend)(q, k, v, *arrays) for attend, arrays in branches]
    if not outputs:
      return jax.nn.dot_product_attention(q, k, v, implementation=self.config.dense_implementation)
    total = sum(o.astype(jnp.float32) for o in outputs)
    if self.combine == "mean":
      total = total / len(outputs)
    return total.astype(q.dtype)
