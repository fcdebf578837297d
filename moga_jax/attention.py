"""MoGAAttention: the drop-in Flax NNX visual self-attention block of the MoGA paper."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from moga_jax.rope import apply_rope, rope_angles
from moga_jax.routing import BALANCE_LOSSES, GroupRouter, routed_group_attention
from moga_jax.sequence_parallel import ulysses
from moga_jax.sharding import ShardingRules, constrain
from pallas_kernels import KernelOptions, frame_attention, shot_window_attention, window_attention
from pallas_kernels.validation import check_int

COMBINES = ("mean", "sum")

# MoGAAttention keyword arguments that turn every sparse branch off: plain dense attention with
# the same projections (the unmodified Wan model, or blocks kept dense).
DENSE = {
  "num_groups": None,
  "stga_windows": None,
  "frame_attention": False,
  "window": None,
  "window_tile": None,
}


def is_dense(attention: dict | None) -> bool:
  """Whether MoGAAttention keyword arguments (None: the defaults) leave no sparse branch on."""
  kw = {} if attention is None else attention
  return (
    kw.get("num_groups", 5) is None
    and kw.get("stga_windows", (2, 2)) is None
    and not kw.get("frame_attention", True)
    and kw.get("window") is None
  )


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
    num_groups: MoGA's groups M (the paper: 5 for Wan, 20 for the minute-long model); None
      turns the MoGA branch off.
    top_k: groups per token (1 in the paper). per_head_router: route each head on its own
      (an extension; the paper shares one routing). balance_loss: "paper" (eq. 8 as printed)
      or "switch".
    stga_windows: (rows, cols) spatial windows per latent frame (2x2 for Wan, 4x4 for the
      60-s model); None turns STGA off. stga_temporal_group: frames per temporal group (None:
      a whole shot). stga_context_frames: frames of each adjacent group added to STGA's keys.
    frame_attention: the per-frame full-attention branch.
    window, window_tile: an extra sliding 3D window branch (ours, not the paper's; it crosses
      shot cuts), (t, h, w) window in tiles and tile size in tokens; None: off.
    combine: "mean" of the branch outputs (the paper) or their "sum".
    group_tile: tokens per tile of the sorted group layout (None: the op's default).
    implementation, interpret: forwarded to the attention ops (None: best for the backend).
    kernel_options: a `KernelOptions` or a mapping of its fields (a config section): the
      kernels' tuning knobs (xla chunk size, Triton warps / stages), forwarded to the ops.
    rules: logical sharding rules. With them and a mesh set (`jax.set_mesh`), attention runs
      Ulysses-parallel: sequence-sharded inputs, whole sequences per device for a slice of the
      heads inside `jax.shard_map` (see `sequence_parallel.py`). None: no sharding annotations.
  With every branch off (`**DENSE`) the block is plain dense attention.

  Call: `out, balance_loss = attn(x, grid_shape=(T, H, W), frame_shot=shots)` with x
  [B, T*H*W, dim] and shots int [B, T], the shot of every latent frame, non-decreasing (None:
  one shot). The balancing loss is an explicit output (0 without MoGA) so that it survives
  jit, scan and remat without collections; the model sums it into the training loss.
  """

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    head_dim: int | None = None,
    num_groups: int | None = 5,
    top_k: int = 1,
    per_head_router: bool = False,
    balance_loss: str = "paper",
    stga_windows: tuple[int, int] | None = (2, 2),
    stga_temporal_group: int | None = None,
    stga_context_frames: int = 1,
    frame_attention: bool = True,
    window: tuple[int, int, int] | None = None,
    window_tile: tuple[int, int, int] | None = None,
    combine: str = "mean",
    group_tile: int | None = None,
    qk_norm: bool = True,
    rope_theta: float = 10000.0,
    implementation: str | None = None,
    interpret: bool | None = None,
    kernel_options: KernelOptions | Mapping | None = None,
    rules: ShardingRules | None = None,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    if head_dim is None:
      if dim % num_heads:
        raise ValueError(
          f"num_heads ({num_heads}) must divide dim ({dim}) when head_dim is not given"
        )
      head_dim = dim // num_heads
    if (window is None) != (window_tile is None):
      raise ValueError(
        f"window and window_tile go together, got window={window!r}, window_tile={window_tile!r}"
      )
    if combine not in COMBINES:
      raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if balance_loss not in BALANCE_LOSSES:
      raise ValueError(f"balance_loss must be one of {BALANCE_LOSSES}, got {balance_loss!r}")
    if stga_windows is not None:
      stga_windows = tuple(stga_windows)
      if len(stga_windows) != 2 or any(not isinstance(s, int) or s < 1 for s in stga_windows):
        raise ValueError(
          f"stga_windows must be None or two positive ints (rows, cols), got {stga_windows!r}"
        )
    if stga_temporal_group is not None:
      check_int("stga_temporal_group", stga_temporal_group)
    check_int("stga_context_frames", stga_context_frames, minimum=0)
    if num_groups is not None:
      check_int("num_groups", num_groups)
    self.num_heads, self.head_dim, self.num_groups = num_heads, head_dim, num_groups
    self.stga_windows, self.stga_temporal_group = stga_windows, stga_temporal_group
    self.stga_context_frames, self.frame_attention = stga_context_frames, frame_attention
    self.window, self.window_tile, self.group_tile = window, window_tile, group_tile
    self.combine = combine
    # Set True to keep every call's routing as an nnx.Intermediate "routing" (group ids and
    # probabilities), for analysis: `nnx.pop(model, nnx.Intermediate)` after the call.
    self.record_routing = False
    self.rope_theta = rope_theta
    self.implementation, self.interpret = implementation, interpret
    self.kernel_options = KernelOptions.of(kernel_options)
    self.rules = rules
    inner = num_heads * head_dim
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q, self.k, self.v, self.o = (
      linear(dim, inner),
      linear(dim, inner),
      linear(dim, inner),
      linear(inner, dim),
    )
    norm = lambda: nnx.RMSNorm(inner, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm_q, self.norm_k = (norm(), norm()) if qk_norm else (None, None)
    self.router = (
      None
      if num_groups is None
      else GroupRouter(
        dim,
        num_groups,
        num_heads=num_heads if per_head_router else None,
        top_k=top_k,
        # Routing stays in float32 whatever `dtype`: its argmax and gate p(g|x) decide groups.
        balance=balance_loss,
        dtype=None,
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
    self, x: jax.Array, *, grid_shape: tuple[int, int, int], frame_shot: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    batch, seq, _ = x.shape
    grid_shape = tuple(int(g) for g in grid_shape)
    if len(grid_shape) != 3 or math.prod(grid_shape) != seq:
      raise ValueError(
        f"grid_shape must be (T, H, W) with T * H * W == seq ({seq}), got {grid_shape}"
      )
    if frame_shot is None:
      frame_shot = jnp.zeros((batch, grid_shape[0]), jnp.int32)
    elif tuple(frame_shot.shape) != (batch, grid_shape[0]):
      raise ValueError(
        f"frame_shot must have shape [batch, T] = {(batch, grid_shape[0])} (the "
        f"shot of each latent frame), got {tuple(frame_shot.shape)}"
      )
    q, k, v = self.q(x), self.k(x), self.v(x)
    if self.norm_q is not None:
      q, k = self.norm_q(q), self.norm_k(k)
    heads = lambda t: constrain(
      t.reshape(batch, seq, self.num_heads, self.head_dim),
      self.rules,
      "activation_batch",
      "activation_length",
      "activation_heads",
      None,
    )
    angles = jnp.asarray(rope_angles(grid_shape, self.head_dim, self.rope_theta))
    q, k, v = apply_rope(heads(q), angles), apply_rope(heads(k), angles), heads(v)

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
    return self.o(out.reshape(batch, seq, -1)), balance

  def _attend(self, q, k, v, *rest, grid_shape, routed: int):
    """The branches over whole sequences: q, k, v [B, N, h, D] for the heads this device holds;
    rest = (group_ids, gates) when routed, then the frames' shots [B, T]."""
    ops = dict(
      implementation=self.implementation, interpret=self.interpret, options=self.kernel_options
    )
    routing, frame_shot = rest[:routed], rest[routed]
    outputs = []
    if routing:
      outputs.append(
        routed_group_attention(
          q, k, v, *routing, num_groups=self.num_groups, tile=self.group_tile, **ops
        )
      )
    if self.stga_windows is not None:
      outputs.append(
        shot_window_attention(
          q,
          k,
          v,
          frame_shot,
          grid_shape=grid_shape,
          spatial_groups=self.stga_windows,
          temporal_group=self.stga_temporal_group,
          context_frames=self.stga_context_frames,
          **ops,
        )
      )
    if self.frame_attention:
      outputs.append(frame_attention(q, k, v, grid_shape=grid_shape, **ops))
    if self.window is not None:
      outputs.append(
        window_attention(
          q, k, v, grid_shape=grid_shape, tile=self.window_tile, window=self.window, **ops
        )
      )
    if not outputs:
      return jax.nn.dot_product_attention(q, k, v)
    total = sum(o.astype(jnp.float32) for o in outputs)
    if self.combine == "mean":
      total = total / len(outputs)
    return total.astype(q.dtype)
