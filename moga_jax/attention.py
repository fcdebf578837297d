"""MoGAAttention: the drop-in Flax NNX self-attention module with Mixture-of-Groups routing."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from moga_jax.rope import apply_rope, rope_angles
from moga_jax.routing import GroupRouter, RouterOutput, routed_group_attention
from moga_jax.sequence_parallel import ulysses
from moga_jax.sharding import ShardingRules, constrain
from pallas_kernels import window_attention


class MoGAAttention(nnx.Module):
  """Self-attention for tokens on a (T, H, W) grid: routed group attention (+ local windows).

  out = o( gate * GroupAttention(q, k, v) [+ WindowAttention(q, k, v)] ), with q/k RMS-normed
  over the full inner width and rotated by 3D RoPE (Wan 2.1's layout: separate q, k, v, o
  linears, so its weights map one to one). The router reads the block's input features.

  Args:
    dim: model width. num_heads, head_dim: attention heads (head_dim defaults to dim // heads).
    num_groups: groups G; None gives plain dense attention with the same projections (no
      router), e.g. for blocks kept dense or for the unmodified Wan model.
    top_k: groups per token. per_head_router: route each head on its own (else shared).
    window, window_tile: the local branch, (t, h, w) window in tiles and tile size in tokens;
      None (default) turns it off. Its output is added to the group branch.
    group_tile: tokens per tile of the sorted group layout (None: the op's default).
    implementation, interpret: forwarded to the attention ops (None: best for the backend).
    rules: logical sharding rules. With them and a mesh set (`jax.set_mesh`), attention runs
      Ulysses-parallel: sequence-sharded inputs, whole sequences per device for a slice of the
      heads inside `jax.shard_map` (see `sequence_parallel.py`). None: no sharding annotations.

  Call: `out, balance_loss = attn(x, grid_shape=(T, H, W))` with x [B, T*H*W, dim]. The
  balancing loss is an explicit output (0 for dense attention) so that it survives jit,
  scan and remat without collections; the model sums it into the training loss.
  """

  def __init__(
      self,
      dim: int,
      num_heads: int,
      *,
      head_dim: int | None = None,
      num_groups: int | None = 8,
      top_k: int = 1,
      per_head_router: bool = True,
      window: tuple[int, int, int] | None = None,
      window_tile: tuple[int, int, int] | None = None,
      group_tile: int | None = None,
      qk_norm: bool = True,
      rope_theta: float = 10000.0,
      implementation: str | None = None,
      interpret: bool | None = None,
      rules: ShardingRules | None = None,
      dtype: jnp.dtype | None = None,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    if head_dim is None:
      if dim % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide dim ({dim}) when head_dim is "
                         "not given")
      head_dim = dim // num_heads
    if (window is None) != (window_tile is None):
      raise ValueError(f"window and window_tile go together, got window={window!r}, "
                       f"window_tile={window_tile!r}")
    self.num_heads, self.head_dim, self.num_groups = num_heads, head_dim, num_groups
    self.window, self.window_tile, self.group_tile = window, window_tile, group_tile
    self.rope_theta = rope_theta
    self.implementation, self.interpret = implementation, interpret
    self.rules = rules
    inner = num_heads * head_dim
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q, self.k, self.v, self.o = linear(dim, inner), linear(dim, inner), linear(dim, inner), \
        linear(inner, dim)
    norm = lambda: nnx.RMSNorm(inner, epsilon=1e-6, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
    self.norm_q, self.norm_k = (norm(), norm()) if qk_norm else (None, None)
    self.router = None if num_groups is None else GroupRouter(
        dim, num_groups, num_heads=num_heads if per_head_router else None, top_k=top_k,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, grid_shape: tuple[int, int, int]
               ) -> tuple[jax.Array, jax.Array]:
    batch, seq, _ = x.shape
    grid_shape = tuple(int(g) for g in grid_shape)
    if len(grid_shape) != 3 or math.prod(grid_shape) != seq:
      raise ValueError(f"grid_shape must be (T, H, W) with T * H * W == seq ({seq}), got "
                       f"{grid_shape}")
    q, k, v = self.q(x), self.k(x), self.v(x)
    if self.norm_q is not None:
      q, k = self.norm_q(q), self.norm_k(k)
    heads = lambda t: constrain(t.reshape(batch, seq, self.num_heads, self.head_dim), self.rules,
                                "activation_batch", "activation_length", "activation_heads", None)
    angles = jnp.asarray(rope_angles(grid_shape, self.head_dim, self.rope_theta))
    q, k, v = apply_rope(heads(q), angles), apply_rope(heads(k), angles), heads(v)

    # Routing is per token, so it runs sequence-sharded like the projections; the balance loss
    # (a mean over all tokens) is taken here too. Only ids and gates cross into attention.
    routing = None if self.router is None else self.router(x)
    routed = () if routing is None else (routing.group_ids, routing.gates)
    per_head = routing is not None and routing.group_ids.ndim == 4
    out = ulysses(functools.partial(self._attend, grid_shape=grid_shape), self.rules,
                  per_head=(q, k, v, *(routed if per_head else ())),
                  per_token=() if per_head else routed)
    balance = jnp.zeros((), jnp.float32) if routing is None else routing.balance_loss
    return self.o(out.reshape(batch, seq, -1)), balance

  def _attend(self, q, k, v, group_ids=None, gates=None, *, grid_shape):
    """Attention over whole sequences: q, k, v [B, N, h, D] for the heads this device holds."""
    ops = dict(implementation=self.implementation, interpret=self.interpret)
    if group_ids is None:
      out = jax.nn.dot_product_attention(q, k, v)
    else:
      out = routed_group_attention(q, k, v, RouterOutput(group_ids, gates, None, None),
                                   num_groups=self.num_groups, tile=self.group_tile, **ops)
    if self.window is not None:
      out = out + window_attention(q, k, v, grid_shape=grid_shape, tile=self.window_tile,
                                   window=self.window, **ops)
    return out
