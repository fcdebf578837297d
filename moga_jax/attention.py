"""MoGAAttention: the drop-in Flax NNX visual self-attention block of the MoGA paper."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from moga_jax.model_config import AttentionConfig
from moga_jax.rope import apply_rope, rope_angles
from moga_jax.routing import GroupRouter, routed_group_attention
from moga_jax.sequence_parallel import ulysses
from moga_jax.sharding import ShardingRules, constrain
from pallas_kernels import frame_attention, shot_window_attention, window_attention


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
    config: AttentionConfig | None = None,
    head_dim: int | None = None,
    rules: ShardingRules | None = None,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    rngs: nnx.Rngs,
    **settings,
  ):
    if head_dim is None:
      if dim % num_heads:
        raise ValueError(
          f"num_heads ({num_heads}) must divide dim ({dim}) when head_dim is not given"
        )
      head_dim = dim // num_heads
    c = AttentionConfig.of(config)
    c = c.replace(**settings) if settings else c
    self.config = c
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
      return jax.nn.dot_product_attention(q, k, v, implementation=self.config.dense_implementation)
    total = sum(o.astype(jnp.float32) for o in outputs)
    if self.combine == "mean":
      total = total / len(outputs)
    return total.astype(q.dtype)
