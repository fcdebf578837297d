"""Work shares (context parallelism past the head count): the `count` shares of an attention op
add up to the whole op, forward and gradients, on every implementation, and each share is 0
outside its own tokens. Skewed groups (one giant group, empty groups) and random shot layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, random_qkv

from pallas_kernels import frame_attention, group_attention, shot_window_attention
from pallas_kernels.metadata import WorkShare

GRID = (6, 4, 8)  # 192 tokens: tile 16 -> 12 tiles; windows of 2 x 4 tokens per frame (2x2)
N = 6 * 4 * 8


def _skewed_groups(key, groups: int) -> jax.Array:
  """Half the tokens in group 0, the rest spread over the others but group 2 (left empty)."""
  ids = jax.random.randint(key, (2, N), 0, groups)
  ids = jnp.where(ids == 2, 1, ids)
  return jnp.where(jax.random.uniform(jax.random.fold_in(key, 1), (2, N)) < 0.5, 0, ids)


def _shots(key) -> jax.Array:
  """Random non-decreasing shot ids [2, T], different per batch element."""
  cuts = jax.random.bernoulli(key, 0.4, (2, GRID[0]))
  return jnp.cumsum(cuts.at[:, 0].set(False), axis=1).astype(jnp.int32)


def _op(kind: str, key):
  if kind == "group":
    ids = _skewed_groups(key, 5)
    return lambda q, k, v, **kw: group_attention(q, k, v, ids, num_groups=5, tile=16, **kw)
  if kind == "stga":
    shots = _shots(key)
    return lambda q, k, v, **kw: shot_window_attention(
      q, k, v, shots, grid_shape=GRID, spatial_groups=(2, 2), tile=16, **kw
    )
  return lambda q, k, v, **kw: frame_attention(q, k, v, grid_shape=GRID, tile=16, **kw)


@pytest.mark.parametrize("implementation", ["xla", "pallas_tpu", "pallas_gpu", "reference"])
@pytest.mark.parametrize("kind", ["group", "stga", "frame"])
@pytest.mark.parametrize("count", [3])  # uneven: 5 groups, 4 windows, 6 frames over 3
def test_shares_add_up_to_the_whole_op(kind, implementation, count):
  key = jax.random.key(7)
  q, k, v = random_qkv(key, (2, N, 2, 16))
  op = _op(kind, jax.random.fold_in(key, 3))
  cotangent = jax.random.normal(jax.random.fold_in(key, 4), q.shape)
  loss = lambda q, k, v, **kw: jnp.sum(op(q, k, v, implementation=implementation, **kw) * cotangent)
  whole = jax.value_and_grad(loss, argnums=(0, 1, 2))
  value, grads = whole(q, k, v)
  out = op(q, k, v, implementation=implementation)
  parts, part_grads = [], []
  for index in range(count):
    share = WorkShare(jnp.int32(index), count)
    part = op(q, k, v, implementation=implementation, share=share)
    # Outside its own tokens a share is exactly 0 (not NaN): the shares can be summed.
    assert np.isfinite(np.asarray(part)).all()
    parts.append(part)
    part_grads.append(jax.grad(lambda *a, s=share: loss(*a, share=s), argnums=(0, 1, 2))(q, k, v))
  owned = np.stack([np.abs(np.asarray(p)).sum((2, 3)) > 0 for p in parts])
  assert (owned.sum(0) <= 1).all(), "a token computed by two shares"
  assert_close(sum(parts), out, what=f"{kind} forward")
  for name, whole_grad, *shares in zip("qkv", grads, *part_grads, strict=True):
    assert_close(sum(shares), whole_grad, what=f"{kind} d{name}")
  del value


def test_a_share_is_traced_under_jit_and_checked_when_concrete():
  q, k, v = random_qkv(jax.random.key(0), (1, N, 2, 16))
  ids = jnp.zeros((1, N), jnp.int32)
  run = jax.jit(
    lambda i: group_attention(q, k, v, ids, num_groups=2, tile=16, share=WorkShare(i, 2))
  )
  assert_close(run(jnp.int32(0)) + run(jnp.int32(1)), group_attention(q, k, v, ids, num_groups=2))
  with pytest.raises(ValueError, match=r"share.index must be in \[0, 2\), got 2"):
    group_attention(q, k, v, ids, num_groups=2, share=(2, 2))
  with pytest.raises(TypeError, match="share must be None or a WorkShare"):
    group_attention(q, k, v, ids, num_groups=2, share=3)
  with pytest.raises(ValueError, match=r"share\.count"):
    frame_attention(q, k, v, grid_shape=GRID, share=(0, 0))
