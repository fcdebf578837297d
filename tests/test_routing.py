"""GroupRouter, the balancing loss and the gated (top-k) group branch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_close, random_qkv

from moga_jax.model.routing import GroupRouter, balance_loss, routed_group_attention
from pallas_kernels import group_attention


@pytest.mark.parametrize(("num_heads", "top_k"), [(None, 1), (3, 1), (None, 2), (3, 3)])
def test_router_shapes_and_gates(key, num_heads, top_k):
  router = GroupRouter(12, 5, num_heads=num_heads, top_k=top_k, rngs=nnx.Rngs(0))
  x = jax.random.normal(key, (2, 9, 12))
  out = router(x)
  lead = (2, 9) if num_heads is None else (2, 9, num_heads)
  assert out.group_ids.shape == (*lead, top_k) and out.group_ids.dtype == jnp.int32
  assert out.gates.shape == (*lead, top_k) and out.probs.shape == (*lead, 5)
  np.testing.assert_allclose(out.probs.sum(-1), 1.0, rtol=1e-5)
  # Gates are the probabilities of the chosen groups, best first; choices are distinct.
  np.testing.assert_allclose(out.gates, jnp.take_along_axis(out.probs, out.group_ids, -1))
  assert np.all(np.asarray(out.gates)[..., 0] >= np.asarray(out.probs).max(-1) - 1e-7)
  ids = np.sort(np.asarray(out.group_ids), axis=-1)
  assert np.all(np.diff(ids, axis=-1) > 0)
  # A small random init spreads tokens over several groups from the start.
  assert len(np.unique(np.asarray(out.group_ids[..., 0]))) > 1


def test_switch_balance_loss_uniform_is_one_and_collapse_tends_to_num_groups():
  g = 8
  uniform = jnp.full((2, 64, g), 1.0 / g)
  even_ids = (jnp.arange(2 * 64).reshape(2, 64, 1) % g).astype(jnp.int32)
  np.testing.assert_allclose(balance_loss(uniform, even_ids, "switch"), 1.0, rtol=1e-6)
  # Per-head routing: averaged over heads.
  np.testing.assert_allclose(
    balance_loss(jnp.full((2, 64, 3, g), 1.0 / g), jnp.zeros((2, 64, 3, 1), jnp.int32), "switch"),
    1.0,
    rtol=1e-6,
  )
  losses = []
  for confidence in (0.5, 0.9, 0.999):
    probs = jnp.full((2, 64, g), (1 - confidence) / (g - 1)).at[..., 0].set(confidence)
    losses.append(float(balance_loss(probs, jnp.zeros((2, 64, 1), jnp.int32), "switch")))
  assert losses[0] < losses[1] < losses[2] <= g
  assert losses[2] > 0.99 * g


def test_paper_balance_loss_values():
  """Eq. 8 as printed: P_i sums the gates of group i's own tokens over N. Balanced one-hot
  routing gives 1, balanced uniform probabilities 1/M, collapse with gate c gives M * c; and
  it differs from the Switch form, which averages p(i|x) over every token."""
  g = 4
  even_ids = (jnp.arange(2 * 64).reshape(2, 64, 1) % g).astype(jnp.int32)
  one_hot = jax.nn.one_hot(even_ids[..., 0], g)
  np.testing.assert_allclose(balance_loss(one_hot, even_ids), 1.0, rtol=1e-6)
  np.testing.assert_allclose(balance_loss(jnp.full((2, 64, g), 1 / g), even_ids), 1 / g, rtol=1e-6)
  probs = jnp.full((2, 64, g), 0.1).at[..., 0].set(0.7)
  collapsed = jnp.zeros((2, 64, 1), jnp.int32)
  np.testing.assert_allclose(balance_loss(probs, collapsed), g * 0.7, rtol=1e-6)
  # A hand count: 3 tokens, 2 groups; ids [0, 0, 1], gates 0.9, 0.6, 0.8.
  probs = jnp.array([[[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]])
  ids = jnp.array([[[0], [0], [1]]])
  fraction, paper_p = np.array([2 / 3, 1 / 3]), np.array([(0.9 + 0.6) / 3, 0.8 / 3])
  switch_p = np.array([(0.9 + 0.6 + 0.2) / 3, (0.1 + 0.4 + 0.8) / 3])
  np.testing.assert_allclose(balance_loss(probs, ids), 2 * fraction @ paper_p, rtol=1e-6)
  np.testing.assert_allclose(balance_loss(probs, ids, "switch"), 2 * fraction @ switch_p, rtol=1e-6)
  with pytest.raises(ValueError, match="balance loss form must be one of"):
    balance_loss(probs, ids, "gshard")


@pytest.mark.parametrize("form", ["paper", "switch"])
def test_balance_loss_gradient_flows_through_probabilities_only(form):
  """d loss / d p[x, j] = G * f_j / N (switch: every token; paper: only the tokens routed to
  j): overloaded groups get their probability pushed down hardest."""
  g, n = 4, 100
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (1, n, g)), axis=-1)
  ids = jnp.asarray([0] * 70 + [1] * 20 + [2] * 10, jnp.int32).reshape(1, n, 1)  # group 3 empty
  grad = jax.grad(balance_loss)(probs, ids, form)
  fraction = np.array([0.7, 0.2, 0.1, 0.0])
  want = np.broadcast_to(g * fraction / n, (1, n, g))
  if form == "paper":
    want = want * np.asarray(jax.nn.one_hot(ids[..., 0], g))
  np.testing.assert_allclose(grad, want, rtol=1e-5)


def test_router_rejects_bad_arguments():
  with pytest.raises(ValueError, match="num_groups must be >= 1, got 0"):
    GroupRouter(4, 0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"top_k must be <= num_groups \(2\), got 3"):
    GroupRouter(4, 2, top_k=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_heads must be None"):
    GroupRouter(4, 2, num_heads=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"x must have shape \[batch, seq, 4\], got \(2, 3, 5\)"):
    GroupRouter(4, 2, rngs=nnx.Rngs(0))(jnp.ones((2, 3, 5)))


def _topk_reference(q, k, v, ids, gates, scale):
  """Dense oracle: a group holds every token that chose it; outputs summed with the gates."""
  b, n, h, _ = q.shape
  if ids.ndim == 3:
    ids, gates = ids[:, :, None], gates[:, :, None]
  ids = jnp.broadcast_to(ids, (b, n, h, ids.shape[-1]))
  gates = jnp.broadcast_to(gates, ids.shape)
  num_groups = int(ids.max()) + 1
  member = jax.nn.one_hot(ids, num_groups).max(axis=-2) > 0  # [b, n, h, G]
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
  out = 0.0
  for c in range(ids.shape[-1]):
    chosen = jnp.moveaxis(ids[..., c], -1, 1)  # [b, h, n]
    mask = jnp.take_along_axis(
      jnp.moveaxis(member, 2, 1)[:, :, None, :, :], chosen[:, :, :, None, None], axis=-1
    )[..., 0]  # [b, h, q, k]
    p = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
    out = out + jnp.einsum("bhqk,bkhd->bqhd", p, v) * gates[..., c][..., None]
  return out


@pytest.mark.parametrize(("num_heads", "top_k"), [(None, 1), (2, 1), (2, 2), (None, 3)])
def test_routed_group_attention_matches_dense_oracle(key, num_heads, top_k):
  k1, k2 = jax.random.split(key)
  q, k, v = random_qkv(k1, (2, 40, 2, 8))
  router = GroupRouter(16, 4, num_heads=num_heads, top_k=top_k, rngs=nnx.Rngs(3))
  routing = router(jax.random.normal(k2, (2, 40, 16)))
  out = routed_group_attention(
    q, k, v, routing.group_ids, routing.gates, num_groups=4, implementation="xla", tile=8
  )
  want = _topk_reference(q, k, v, routing.group_ids, routing.gates, 8**-0.5)
  assert_close(out, want)
  if top_k == 1:  # top-1 is the gate times plain group attention
    ids = routing.group_ids[..., 0]
    gate = routing.gates[..., 0]
    plain = group_attention(q, k, v, ids, num_groups=4, implementation="reference")
    scaled = plain * (gate[..., None] if num_heads else gate[..., None, None])
    assert_close(out, scaled)


def test_gate_carries_gradient_into_the_router(key):
  q, k, v = random_qkv(key, (1, 32, 2, 8))
  x = jax.random.normal(jax.random.key(9), (1, 32, 16))
  router = GroupRouter(16, 3, num_heads=2, rngs=nnx.Rngs(0))

  def loss(router):
    routing = router(x)
    out = routed_group_attention(
      q, k, v, routing.group_ids, routing.gates, num_groups=3, implementation="xla", tile=8
    )
    return jnp.sum(out**2)

  grads = nnx.grad(loss)(router)
  assert float(jnp.abs(grads.proj.kernel[...]).max()) > 0


def test_routed_group_attention_rejects_mismatched_routing(key):
  q, k, v = random_qkv(key, (1, 8, 2, 4))
  bad = jnp.zeros((1, 8, 3, 1), jnp.int32)
  with pytest.raises(ValueError, match=r"group_ids must have shape"):
    routed_group_attention(q, k, v, bad, jnp.ones((1, 8, 3, 1)), num_groups=2)
  with pytest.raises(ValueError, match=r"gates must have the shape of group_ids"):
    routed_group_attention(q, k, v, bad[:, :, :1], jnp.ones((1, 8, 2)), num_groups=2)
