"""MoGAAttention as a library module: the README's "Use as a library" code runs as written, a
[B, T, H, W, C] grid goes in and comes out, bad input is refused naming the module's own
arguments before anything is traced, and the ops check traced ids under checkify on request."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental import checkify

from moga_jax import MoGAAttention
from pallas_kernels import group_attention, shot_window_attention, window_attention

ROOT = Path(__file__).parents[1]
DIM, HEADS = 32, 4
GRID = (2, 4, 4)


def _readme_section_code(heading: str) -> list[str]:
  text = (ROOT / "README.md").read_text()
  start = text.index(f"\n## {heading}\n")
  end = text.find("\n## ", start + 1)
  section = text[start : end if end != -1 else len(text)]
  return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.subprocess
def test_readme_library_section_code_runs():
  """Each python block of "## Use as a library", as written, in a fresh process."""
  blocks = _readme_section_code("Use as a library")
  assert len(blocks) == 2, "the NNX and the linen example"
  assert "nnx.bridge.to_linen" in blocks[1]
  for code in blocks:
    done = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, code + done.stderr[-3000:]


@pytest.fixture(scope="module")
def attn():
  return MoGAAttention(
    DIM, HEADS, num_groups=3, stga_windows=(2, 2), implementation="xla", rngs=nnx.Rngs(0)
  )


def _x(*shape, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(1), shape).astype(dtype)


def test_a_latent_grid_goes_in_and_comes_out(attn):
  """[B, T, H, W, C] == the raster-flattened [B, T*H*W, C] call, reshaped back."""
  video = _x(2, *GRID, DIM)
  shots = jnp.array([[0, 1], [0, 0]], jnp.int32)
  out, balance = attn(video, frame_shot=shots)
  flat, flat_balance = attn(video.reshape(2, -1, DIM), grid_shape=GRID, frame_shot=shots)
  assert out.shape == video.shape
  np.testing.assert_array_equal(np.asarray(out), np.asarray(flat).reshape(video.shape))
  np.testing.assert_array_equal(np.asarray(balance), np.asarray(flat_balance))
  # the grid comes from the shape: a grid in raster order is not a transpose of it
  assert not np.allclose(
    np.asarray(attn(jnp.swapaxes(video, 2, 3), frame_shot=shots)[0]),
    np.asarray(jnp.swapaxes(out, 2, 3)),
    atol=1e-4,
  )
  same, _ = attn(video, grid_shape=GRID, frame_shot=shots)  # the grid may be repeated
  np.testing.assert_array_equal(np.asarray(same), np.asarray(out))


_VIDEO = (2, *GRID, DIM)
_FLAT = (2, 32, DIM)


@pytest.mark.parametrize(
  ("x", "kwargs", "error", "match"),
  [
    (_x(2, 32, 16), {"grid_shape": GRID}, ValueError, r"x must have the module's dim=32 channels"),
    (_x(2, *GRID, 16), {}, ValueError, r"x must have the module's dim=32 channels on its last"),
    (_x(0, 32, DIM), {"grid_shape": GRID}, ValueError, r"x must hold at least one batch element"),
    (_x(0, *GRID, DIM), {}, ValueError, r"x must hold at least one batch element"),
    (
      _x(2, HEADS, 32, DIM // HEADS),
      {"grid_shape": GRID},
      ValueError,
      r"x must be the block's input features .*heads-first \[batch, heads=4, tokens, head_dim=8\]",
    ),
    (
      _x(2, DIM, *GRID),
      {},
      ValueError,
      r"x must be channels-last \[batch, T, H, W, dim=32\].*jnp.moveaxis\(x, 1, -1\)",
    ),
    (_x(32, DIM), {"grid_shape": GRID}, ValueError, r"x must have shape \[batch, T\*H\*W, dim=32"),
    (
      np.ones(_FLAT, np.float64),
      {"grid_shape": GRID},
      TypeError,
      r"x is float64, but MoGAAttention computes in float32 at most.*dtype=jnp.float32",
    ),
    (_x(*_FLAT, dtype=jnp.int32), {"grid_shape": GRID}, TypeError, r"x must have a floating"),
    (_x(*_FLAT), {}, ValueError, r"grid_shape=\(T, H, W\) is needed for x of shape"),
    (_x(*_FLAT), {"grid_shape": (2, 4, 5)}, ValueError, r"T \* H \* W == x's tokens \(32"),
    (_x(*_FLAT), {"grid_shape": (2, 16)}, TypeError, r"grid_shape must be a \(t, h, w\) tuple"),
    (_x(*_VIDEO), {"grid_shape": (2, 2, 8)}, ValueError, r"grid_shape must be x's \(T, H, W\)"),
    (
      _x(2, 2, 1, 16, DIM),
      {},
      ValueError,
      r"stga_windows=\(2, 2\) must be at most the frame's \(H, W\) = \(1, 16\) tokens",
    ),
    (
      _x(*_VIDEO),
      {"frame_shot": jnp.array([[0, 1], [1, 0]])},
      ValueError,
      r"frame_shot must be non-decreasing .* batch element 1 goes from 1 to 0 at frame 1",
    ),
    (
      _x(*_VIDEO),
      {"frame_shot": jnp.zeros((2, 3), jnp.int32)},
      ValueError,
      r"frame_shot must have shape \[batch, T\] = \(2, 2\)",
    ),
    (
      _x(*_VIDEO),
      {"frame_shot": jnp.zeros((2, 2))},
      TypeError,
      r"frame_shot must have an integer dtype",
    ),
    ([[0.0] * DIM], {"grid_shape": (1, 1, 1)}, TypeError, r"x must be an array, got list"),
  ],
)
def test_bad_input_names_the_modules_arguments(attn, x, kwargs, error, match):
  with pytest.raises(error, match=match):
    attn(x, **kwargs)


def test_errors_come_before_tracing(attn):
  """Under nnx.jit the same errors, raised by the checks (no op inside was traced)."""
  with pytest.raises(ValueError, match=r"x must have the module's dim=32 channels"):
    nnx.jit(lambda m, x: m(x, grid_shape=GRID))(attn, _x(2, 32, 16))
  traced = nnx.jit(lambda m, x, s: m(x, frame_shot=s)[0])  # traced shots are not checked here
  assert traced(attn, _x(*_VIDEO), jnp.array([[0, 1], [1, 0]])).shape == _VIDEO


def test_float64_is_computed_in_float32_when_the_module_says_so():
  module = MoGAAttention(DIM, HEADS, dtype=jnp.float32, implementation="xla", rngs=nnx.Rngs(0))
  x = np.asarray(_x(*_VIDEO), np.float64)
  out, _ = module(x)
  assert out.dtype == jnp.float32 and out.shape == _VIDEO


@pytest.mark.parametrize(
  ("kwargs", "error", "match"),
  [
    ({"dim": 32, "num_heads": 0}, ValueError, r"num_heads must be >= 1, got 0"),
    ({"dim": 32, "num_heads": 4, "head_dim": 0}, ValueError, r"head_dim must be >= 1, got 0"),
    ({"dim": 0, "num_heads": 4}, ValueError, r"dim must be >= 1, got 0"),
    ({"dim": 32.0, "num_heads": 4}, TypeError, r"dim must be an int"),
  ],
)
def test_bad_widths_are_named(kwargs, error, match):
  with pytest.raises(error, match=match):
    MoGAAttention(**kwargs, rngs=nnx.Rngs(0))


_Q = jax.random.normal(jax.random.key(2), (2, 32, 2, 8))


@pytest.mark.parametrize(
  ("q", "match"),
  [
    (
      jnp.zeros((0, 32, 2, 8)),
      r"q must hold at least one batch element, got shape \(0, 32, 2, 8\)",
    ),
    (jnp.zeros((2, 32, 0, 8)), r"q must hold at least one head"),
    (jnp.zeros((2, 32, 2, 0)), r"q must have head_dim >= 1, got shape \(2, 32, 2, 0\)"),
    (np.zeros((2, 32, 2, 8), np.float64), r"q must be float32, bfloat16 or float16 .*got float64"),
  ],
)
@pytest.mark.parametrize("op", ["group", "shot_window", "window"])
def test_ops_refuse_empty_axes_and_float64(q, match, op):
  call = {
    "group": lambda q: group_attention(q, q, q, jnp.zeros(q.shape[:2], jnp.int32), num_groups=2),
    "shot_window": lambda q: shot_window_attention(
      q, q, q, jnp.zeros((q.shape[0], 2), jnp.int32), grid_shape=GRID, spatial_groups=(2, 2)
    ),
    "window": lambda q: window_attention(
      q, q, q, grid_shape=GRID, tile=(1, 2, 2), window=(1, 1, 1)
    ),
  }[op]
  with pytest.raises(ValueError, match=match):
    call(q)


def _checked(op, **kw):
  """op(ids) under jit, with and without check_ids, each compiled once, inside checkify."""
  return {
    check: checkify.checkify(jax.jit(lambda ids, check=check: op(ids, check_ids=check, **kw)))
    for check in (True, False)
  }


def test_check_ids_checks_traced_group_ids_under_checkify():
  """Traced ids pass unchecked (clipped) by default; check_ids=True under checkify names them."""
  group = _checked(
    lambda ids, **kw: group_attention(_Q, _Q, _Q, ids, num_groups=3, implementation="xla", **kw)
  )
  ids = jnp.zeros((2, 32), jnp.int32).at[1, 5].set(2)
  group[True](ids)[0].throw()  # in range: nothing
  for bad, values in ((ids.at[0, 7].set(3), r"\[0, 3\]"), (ids.at[1, 0].set(-1), r"\[-1, 2\]")):
    err, _ = group[True](bad)
    with pytest.raises(
      checkify.JaxRuntimeError,
      match=r"group_ids must lie in \[0, num_groups=3\), got values in " + values,
    ):
      err.throw()
    err, out = group[False](bad)
    err.throw()  # opt-in: unchecked by default
    assert np.isfinite(np.asarray(out)).all()
  # through jax.grad too
  err, _ = checkify.checkify(
    jax.grad(
      lambda q: jnp.sum(group_attention(q, q, q, ids.at[0, 0].set(9), num_groups=3, check_ids=True))
    )
  )(_Q)
  with pytest.raises(checkify.JaxRuntimeError, match=r"got values in \[0, 9\]"):
    err.throw()


def test_check_ids_checks_traced_shot_ids_under_checkify():
  shots = _checked(
    lambda s, **kw: shot_window_attention(
      _Q, _Q, _Q, s, grid_shape=(4, 2, 4), spatial_groups=(1, 2), implementation="xla", **kw
    )
  )
  good = jnp.array([[0, 0, 1, 1], [0, 1, 1, 2]], jnp.int32)
  shots[True](good)[0].throw()
  err, _ = shots[True](good.at[1, 3].set(0))
  with pytest.raises(
    checkify.JaxRuntimeError,
    match=r"shot_ids must be non-decreasing .* batch element 1 goes from 1 to 0 at frame 3",
  ):
    err.throw()
  shots[False](good.at[1, 3].set(0))[0].throw()
