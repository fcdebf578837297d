"""Group routing for MoGA: which group each token joins, its gate, and the balancing loss.

A single linear layer maps token features to G logits (per head, or one set shared by the
heads); the softmax gives routing probabilities p, a token joins its top-k groups, and the
probability of a chosen group is its gate. The argmax has no gradient: the gate, multiplied
into the attention output, is what trains the router (Switch-style).

The paper routes once per token, shared by all heads (the default here); per-head routing is
an option.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pallas_kernels import group_attention
from pallas_kernels.common import check_positive_int

BALANCE_LOSSES = ("paper", "switch")


class RouterOutput(NamedTuple):
  """What the router decided. `...` is [B, N] for shared routing and [B, N, H] per head.

  group_ids:    int32 [..., top_k], distinct groups per token, most probable first.
  gates:        float32 [..., top_k], routing probability of each chosen group.
  probs:        float32 [..., G], the full routing distribution.
  balance_loss: float32 scalar, G * sum_j f_j P_j (1 when balanced, up to G when collapsed).
  """

  group_ids: jax.Array
  gates: jax.Array
  probs: jax.Array
  balance_loss: jax.Array


def balance_loss(probs: jax.Array, group_ids: jax.Array, form: str = "paper") -> jax.Array:
  """Group balancing loss M * sum_i F_i P_i (before the weight alpha), averaged over routed heads.

  probs: [B, N, G] or [B, N, H, G]; group_ids: [..., top_k] with the same leading axes. F_i is
  the fraction of (token, choice) assignments sent to group i, over batch and sequence. P_i:
    "paper" (eqs. 6-8 as printed): (1/N) * sum over the tokens routed to i of p(i|x). It is 1
      for balanced, confident routing (every gate 1), 1/M for balanced uniform probabilities,
      and grows towards M as tokens pile into one group.
    "switch" (Switch Transformer): the mean of p(i|x) over all tokens; 1 whenever balanced.
  F carries no gradient; the router learns through P.
  """
  if form not in BALANCE_LOSSES:
    raise ValueError(f"balance loss form must be one of {BALANCE_LOSSES}, got {form!r}")
  num_groups = probs.shape[-1]
  probs = probs.astype(jnp.float32)
  one_hot = jax.nn.one_hot(group_ids, num_groups, dtype=jnp.float32)  # [..., k, G]
  # Means over (batch, sequence) as two axes, not one merged axis: a reshape merging a
  # batch-sharded and a sequence-sharded axis would make every device gather all of them.
  fraction = one_hot.mean(axis=-2).mean(axis=(0, 1))  # [(H,) G]
  if form == "switch":
    mean_prob = probs.mean(axis=(0, 1))
  else:
    mean_prob = (one_hot.sum(axis=-2) * probs).mean(axis=(0, 1))
  per_head = num_groups * jnp.sum(jax.lax.stop_gradient(fraction) * mean_prob, axis=-1)
  return per_head.mean()


_ROUTER_INIT = nnx.initializers.normal(0.02)


class GroupRouter(nnx.Module):
  """Routes tokens to groups with one linear layer (no bias) and a softmax.

  Args:
    in_features: width of the token features fed to the router.
    num_groups: number of groups G.
    num_heads: route each of this many heads on its own (None, the paper's choice: one routing
      per token shared by the heads).
    top_k: groups each token joins (1 in the paper).
    balance: the balancing loss's form, "paper" (eq. 8 as printed) or "switch".
    kernel_init: initializer of the [in_features, heads * G] weight. A small random init routes
      tokens to varied groups from the first step; a zero init would send every token to group
      0, i.e. dense attention.
  """

  def __init__(
    self,
    in_features: int,
    num_groups: int,
    *,
    num_heads: int | None = None,
    top_k: int = 1,
    balance: str = "paper",
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    kernel_init: nnx.Initializer = _ROUTER_INIT,
    rngs: nnx.Rngs,
  ):
    for name, value in (("in_features", in_features), ("num_groups", num_groups), ("top_k", top_k)):
      check_positive_int(name, value)
    if num_heads is not None and (not isinstance(num_heads, int) or num_heads < 1):
      raise ValueError(
        f"num_heads must be None (shared routing) or a positive int, got {num_heads!r}"
      )
    if top_k > num_groups:
      raise ValueError(f"top_k must be <= num_groups ({num_groups}), got {top_k}")
    if balance not in BALANCE_LOSSES:
      raise ValueError(f"balance must be one of {BALANCE_LOSSES}, got {balance!r}")
    self.balance = balance
    self.in_features = in_features
    self.num_groups = num_groups
    self.num_heads = num_heads
    self.top_k = top_k
    self.proj = nnx.Linear(
      in_features,
      (num_heads or 1) * num_groups,
      use_bias=False,
      dtype=dtype,
      param_dtype=param_dtype,
      kernel_init=kernel_init,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> RouterOutput:
    """x: [B, N, in_features] -> RouterOutput (logits and softmax in float32)."""
    if x.ndim != 3 or x.shape[-1] != self.in_features:
      raise ValueError(f"x must have shape [batch, seq, {self.in_features}], got {tuple(x.shape)}")
    logits = self.proj(x).astype(jnp.float32)
    if self.num_heads is not None:
      logits = logits.reshape(*x.shape[:2], self.num_heads, self.num_groups)
    probs = jax.nn.softmax(logits, axis=-1)
    if self.top_k == 1:  # argmax, unlike XLA's TopK, stays split when tokens are sharded
      group_ids = jnp.argmax(probs, axis=-1)[..., None].astype(jnp.int32)
      gates = jnp.take_along_axis(probs, group_ids, axis=-1)
    else:
      gates, group_ids = jax.lax.top_k(probs, self.top_k)
      group_ids = group_ids.astype(jnp.int32)
    return RouterOutput(group_ids, gates, probs, balance_loss(probs, group_ids, self.balance))


def routed_group_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  group_ids: jax.Array,
  gates: jax.Array,
  *,
  num_groups: int,
  **attention_kwargs,
) -> jax.Array:
  """MoGA's group branch: sum over a token's chosen groups of gate * attention in that group.

  q, k, v: [B, N, H, D]; group_ids, gates: a `RouterOutput`'s, [B, N, k] (shared by the heads)
  or [B, N, H, k]. With top_k > 1 a group holds every token that chose it; tokens are
  replicated once per choice so that each group is still exact, full attention (a token appears
  at most once in any group because its choices are distinct). Extra keyword arguments go to
  `group_attention` (scale, implementation, interpret, tile).
  """
  ids = group_ids
  batch, seq, heads, head_dim = q.shape
  top_k = ids.shape[-1]
  if ids.ndim == 3:  # shared by the heads: [B, N, k] -> [B, N, 1, k]
    ids, gates = ids[:, :, None], gates[:, :, None]
  if ids.shape[:2] != (batch, seq) or ids.shape[2] not in (1, heads):
    raise ValueError(
      f"group_ids must have shape [{batch}, {seq}, k] or "
      f"[{batch}, {seq}, {heads}, k] to match q {tuple(q.shape)}, got "
      f"{tuple(group_ids.shape)}"
    )
  if gates.shape != ids.shape:
    raise ValueError(
      f"gates must have the shape of group_ids {tuple(group_ids.shape)}, got {tuple(gates.shape)}"
    )

  def replicate(x):  # [B, N, H, D] -> [B, N * k, H, D], choice-major inside each token
    return jnp.broadcast_to(x[:, :, None], (batch, seq, top_k, *x.shape[2:])).reshape(
      batch, seq * top_k, *x.shape[2:]
    )

  flat_ids = jnp.moveaxis(ids, -1, 2).reshape(batch, seq * top_k, ids.shape[2])
  if flat_ids.shape[-1] == 1:
    flat_ids = flat_ids[..., 0]
  out = group_attention(
    replicate(q), replicate(k), replicate(v), flat_ids, num_groups=num_groups, **attention_kwargs
  )
  out = out.reshape(batch, seq, top_k, heads, head_dim)
  weights = jnp.moveaxis(gates, -1, 2)[..., None]  # [B, N, k, H or 1, 1]
  return jnp.sum(out.astype(jnp.float32) * weights, axis=2).astype(q.dtype)
