"""MoGAAttention, the DiT and its parts: shapes, equivalences, gradients, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_close

from moga_jax.model import latents
from moga_jax.model.attention import MoGAAttention
from moga_jax.model.config import DENSE
from moga_jax.model.dit import VideoDiT
from moga_jax.model.layers import shot_attention
from moga_jax.model.rope import apply_rope, rope_angles
from moga_jax.model.text_to_video import frame_shots
from moga_jax.parallel.sharding import ShardingRules, make_mesh
from moga_jax.train.config_files import load_config_module
from moga_jax.train.run_config import RunConfig
from moga_jax.train.state import init_train_state, make_train_step

tiny = load_config_module("tiny")

GRID = (4, 6, 6)


def _x(key, dim=32):
  return jax.random.normal(key, (2, int(np.prod(GRID)), dim))


def _sharing_projections(*modules):
  """Gives every module the first one's q, k, v, o and norms."""
  for other in modules[1:]:
    for name in ("q", "k", "v", "o", "norm_q", "norm_k"):
      nnx.update(getattr(other, name), nnx.state(getattr(modules[0], name)))
  return modules


def test_paper_block_in_closed_form(key):
  """One group (gate exactly 1), 1x1 windows, one shot: MoGA and STGA are both full attention,
  so the paper's block is o((2 * full + per_frame) / 3) = (2 * dense + frame_only) / 3 (the
  output projection is affine and the weights sum to 1)."""
  paper, both_full, frame_only, dense = _sharing_projections(
    MoGAAttention(32, 4, num_groups=1, stga_windows=(1, 1), rngs=nnx.Rngs(1)),
    MoGAAttention(
      32, 4, num_groups=1, stga_windows=(1, 1), frame_attention=False, rngs=nnx.Rngs(2)
    ),
    MoGAAttention(32, 4, **(DENSE | {"frame_attention": True}), rngs=nnx.Rngs(3)),
    MoGAAttention(32, 4, **DENSE, rngs=nnx.Rngs(4)),
  )
  assert paper.branches == ("moga", "stga", "frame") and dense.branches == ()
  x, shots = _x(key), jnp.zeros((2, GRID[0]), jnp.int32)
  out, balance = paper(x, grid_shape=GRID, frame_shot=shots)
  full, zero = dense(x, grid_shape=GRID)
  assert_close(both_full(x, grid_shape=GRID)[0], full)
  frame = frame_only(x, grid_shape=GRID)[0]
  assert_close(out, (2 * full + frame) / 3)
  np.testing.assert_allclose(balance, 1.0, rtol=1e-6)  # one group, gate 1: eq. 8 gives 1
  assert float(zero) == 0.0
  summed = MoGAAttention(32, 4, num_groups=1, stga_windows=(1, 1), combine="sum", rngs=nnx.Rngs(5))
  _sharing_projections(paper, summed)
  bias = paper.o.bias[...]
  assert_close(summed(x, grid_shape=GRID)[0] - bias, 3 * (out - bias))


@pytest.mark.parametrize("window", [None, (3, 3, 3)])
def test_moga_attention_shapes_and_router_gradient(key, window):
  attn = MoGAAttention(
    32,
    4,
    num_groups=3,
    window=window,
    window_tile=None if window is None else (1, 3, 3),
    rngs=nnx.Rngs(0),
  )
  x = _x(key)
  out, balance = attn(x, grid_shape=GRID)
  assert out.shape == x.shape and balance.shape == ()

  def loss(attn):
    out, balance = attn(x, grid_shape=GRID)
    return jnp.mean(out**2) + balance

  grads = nnx.grad(loss)(attn)
  assert float(jnp.abs(grads.router.proj.kernel[...]).max()) > 0


def test_moga_attention_errors():
  with pytest.raises(ValueError, match=r"num_heads \(5\) must divide dim \(32\)"):
    MoGAAttention(32, 5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="window and window_tile go together"):
    MoGAAttention(32, 4, window=(3, 3, 3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"stga_context_frames must be >= 0, got -1"):
    MoGAAttention(32, 4, stga_context_frames=-1, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"stga_temporal_group must be >= 1, got 0"):
    MoGAAttention(32, 4, stga_temporal_group=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"stga_windows must be None or two positive ints"):
    MoGAAttention(32, 4, stga_windows=(2, 0), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"combine must be one of"):
    MoGAAttention(32, 4, combine="max", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"balance_loss must be one of"):
    MoGAAttention(32, 4, balance_loss="gshard", rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match=r"num_groups must be an int"):
    MoGAAttention(32, 4, num_groups=2.0, rngs=nnx.Rngs(0))
  attn = MoGAAttention(32, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"T \* H \* W == x's tokens \(144, .*got \(4, 6, 5\)"):
    attn(_x(jax.random.key(0)), grid_shape=(4, 6, 5))


def test_rope_rotates_by_relative_position():
  angles = jnp.asarray(rope_angles((8, 1, 1), 12))
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 12))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 12))
  rot = lambda x, pos: apply_rope(jnp.broadcast_to(x, (1, 8, 1, 12)), angles)[0, pos, 0]
  dots = [float(rot(q, i + 2) @ rot(k, i)) for i in range(6)]
  np.testing.assert_allclose(dots, dots[0], rtol=1e-5)  # depends on i - j only
  np.testing.assert_allclose(jnp.linalg.norm(rot(q, 5)), jnp.linalg.norm(q), rtol=1e-6)


def test_latent_fold_round_trip(key):
  video = jax.random.uniform(key, (2, 3, 8, 12, 3), minval=-1, maxval=1)
  z = latents.encode(video, 4)
  assert z.shape == (2, 3, 2, 3, 48)
  np.testing.assert_array_equal(latents.decode(z, 4), video)


def test_frame_shots():
  bounds = jnp.array([[[0, 3], [3, 6]], [[0, 2], [0, 0]]], jnp.int32)
  got = frame_shots(bounds, jnp.array([2, 1]), 6)
  np.testing.assert_array_equal(got, [[0, 0, 0, 1, 1, 1], [0, 0, -1, -1, -1, -1]])


def _dit(**kw):
  args = dict(
    in_channels=12,
    out_channels=12,
    dim=32,
    ffn_dim=64,
    num_layers=2,
    num_heads=4,
    text_dim=16,
    attention=dict(num_groups=3),
    rngs=nnx.Rngs(0),
  )
  return VideoDiT(**(args | kw))


def _dit_inputs(key):
  k1, k2 = jax.random.split(key)
  x = jax.random.normal(k1, (2, 4, 4, 6, 12))
  context = jax.random.normal(k2, (2, 2, 5, 16))
  mask = jnp.ones((2, 2, 5), bool).at[1, 1, 3:].set(False)
  frame_shot = jnp.array([[0, 0, 1, 1], [0, 1, 1, 1]], jnp.int32)
  return x, jnp.array([0.2, 0.9]), context, mask, frame_shot


def test_dit_shapes_remat_and_scan(key):
  inputs = _dit_inputs(key)
  model = _dit()
  # A non-zero head so the output depends on everything.
  model.head.kernel[...] = 0.02 * jax.random.normal(jax.random.key(3), model.head.kernel.shape)
  out, balance = model(*inputs)
  assert out.shape == inputs[0].shape and np.isfinite(np.asarray(out)).all()
  remat = _dit(remat=True)
  nnx.update(remat, nnx.state(model))
  assert_close(remat(*inputs)[0], out)
  scanned = _dit(scan_layers=True, remat=True)
  out_scan, bal_scan = scanned(*inputs)
  assert out_scan.shape == out.shape and bal_scan.shape == balance.shape


@pytest.mark.parametrize("scan_layers", [False, True])
def test_bfloat16_compute_keeps_float32_parameters_and_tracks_float32(key, scan_layers):
  """dtype=bfloat16: the same parameters (float32, also their gradients), a float32 velocity
  within bfloat16's error of the float32 model's, and a float32 balance loss equal to it up to
  rounding (the router runs in float32). Kills bfloat16 parameters, gradients or velocity, and
  a dtype that never reaches the matmuls (the outputs would then be identical)."""
  inputs = _dit_inputs(key)
  f32 = _dit(scan_layers=scan_layers)
  f32.head.kernel[...] = 0.02 * jax.random.normal(jax.random.key(3), f32.head.kernel.shape)
  bf16 = _dit(scan_layers=scan_layers, dtype=jnp.bfloat16)
  nnx.update(bf16, nnx.state(f32))
  assert {v.dtype for v in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype("float32")}
  (want, want_balance), (got, got_balance) = f32(*inputs), bf16(*inputs)
  assert got.dtype == jnp.float32 and got_balance.dtype == jnp.float32
  assert_close(got, want, dtype=jnp.bfloat16)
  assert not np.array_equal(np.asarray(got), np.asarray(want))  # bfloat16 did compute
  assert abs(float(got_balance) - float(want_balance)) < 0.05 * abs(float(want_balance))
  loss = lambda m: jnp.mean(m(*inputs)[0] ** 2)
  grads = nnx.grad(loss)(bf16)
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype("float32")}
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_each_shot_sees_only_its_own_caption(key):
  model = _dit()
  model.head.kernel[...] = 0.02 * jax.random.normal(jax.random.key(3), model.head.kernel.shape)
  x, t, context, mask, frame_shot = _dit_inputs(key)
  frame_shot = jnp.array([[0, 0, 1, 1]] * 2, jnp.int32)
  dense = _dit(attention=None)  # MoGA self-attention would mix shots (as it should)
  nnx.update(dense, nnx.state(model, nnx.Not(nnx.PathContains("router"))))
  base = dense(x, t, context, mask, frame_shot)[0]
  changed = dense(x, t, context.at[:, 1].add(1.0), mask, frame_shot)[0]
  # Per-frame effect of changing shot 1's caption, through one layer of dense attention, is
  # nonzero on shot 1 frames; to isolate cross-attention, use a single frame per token path:
  assert float(jnp.abs(changed - base)[:, 2:].max()) > 0
  one_layer = _dit(attention=None, num_layers=1, patch=(1, 1, 1))
  one_layer.head.kernel[...] = 0.02 * jax.random.normal(
    jax.random.key(4), one_layer.head.kernel.shape
  )
  # With self-attention disabled (zero output projection), tokens of shot 0 cannot see shot 1.
  one_layer.blocks[0].self_attn.o.kernel[...] = jnp.zeros_like(
    one_layer.blocks[0].self_attn.o.kernel[...]
  )
  a = one_layer(x, t, context, mask, frame_shot)[0]
  b = one_layer(x, t, context.at[:, 1].add(1.0), mask, frame_shot)[0]
  np.testing.assert_array_equal(a[:, :2], b[:, :2])
  assert float(jnp.abs(a[:, 2:] - b[:, 2:]).max()) > 0


def _per_shot_reference(q, token_shot, k, v, mask):
  """Each shot's attention for every token, kept where the token is in that shot."""
  out = jnp.zeros_like(q)
  for s in range(k.shape[1]):
    attended = jax.nn.dot_product_attention(q, k[:, s], v[:, s], mask=mask[:, s][:, None, None])
    mine = (token_shot == s) & mask[:, s].any(-1)[:, None]
    out = jnp.where(mine[..., None, None], attended, out)
  return out


@pytest.mark.parametrize("query_chunk", [7, 64, 1024])
def test_chunked_shot_attention_equals_the_per_shot_loop(key, query_chunk):
  kq, kk, kv, ks = jax.random.split(key, 4)
  q = jax.random.normal(kq, (2, 50, 3, 8))
  k, v = (jax.random.normal(s, (2, 3, 5, 3, 8)) for s in (kk, kv))
  mask = jnp.array(
    [
      [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]],
      [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
    ],
    bool,
  )
  token_shot = jax.random.randint(ks, (2, 50), -1, 3)  # -1: outside every shot
  attend = lambda q, k, v: shot_attention(q, token_shot, k, v, mask, query_chunk=query_chunk)
  want = lambda q, k, v: _per_shot_reference(q, token_shot, k, v, mask)
  assert_close(attend(q, k, v), want(q, k, v))
  w = jax.random.normal(jax.random.key(9), q.shape)
  grads = jax.grad(lambda *a: jnp.sum(attend(*a) * w), argnums=(0, 1, 2))(q, k, v)
  want_grads = jax.grad(lambda *a: jnp.sum(want(*a) * w), argnums=(0, 1, 2))(q, k, v)
  for got, ref, name in zip(grads, want_grads, "qkv", strict=True):
    assert_close(got, ref, what=f"d{name}")


def test_dit_rejects_bad_shapes(key):
  x, t, context, mask, frame_shot = _dit_inputs(key)
  with pytest.raises(
    ValueError,
    match=r"latent grid \(F, H, W\) = \(4, 4, 5\) must be "
    r"divisible by the patch \(1, 2, 2\)",
  ):
    _dit()(x[:, :, :, :5], t, context, mask, frame_shot)
  with pytest.raises(ValueError, match=r"frame_shot must have shape \[batch, frames\]"):
    _dit()(x, t, context, mask, frame_shot[:, :3])
  with pytest.raises(ValueError, match=r"num_heads \(5\) must divide dim \(32\), the model width"):
    _dit(num_heads=5)


def _tiny_config():
  cfg = tiny.get_config()
  cfg.model.dim, cfg.model.ffn_dim, cfg.model.num_layers = 32, 64, 2
  cfg.model.text_dim = 16
  cfg.train.warmup_steps, cfg.train.steps = 5, 40
  return cfg


@pytest.mark.parametrize(
  ("field", "value", "match"),
  [
    ("model.num_heads", 3, r"config.model.num_heads \(3\) must divide dim \(32\)"),
    (
      "model.patch",
      (1, 3, 3),
      r"latent grid \(frames, height, width\) = \(16, 8, 8\) "
      r"must be divisible by config.model.patch \(1, 3, 3\)",
    ),
    ("data.height", 30, r"must be divisible by config.model.latent_factor \(4\)"),
    ("train.steps", 0, r"config.train.steps must be >= 1, got 0"),
    ("model.dense_layers", (7,), r"must index blocks 0..1"),
    ("data.shots", 3, r"config.data.shots \(3\) must be <= config.data.max_shots \(2\)"),
  ],
)
def test_bad_config_values(field, value, match):
  cfg = _tiny_config()
  section, name = field.split(".")
  cfg[section][name] = value
  with pytest.raises(ValueError, match=match):
    RunConfig.from_config_dict(cfg)


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch():
  cfg = _tiny_config()
  RunConfig.from_config_dict(cfg)
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  train_state = init_train_state(cfg, mesh, ShardingRules.from_config(cfg.sharding.rules))
  step, state = make_train_step(cfg, train_state), train_state.state
  rng = np.random.default_rng(0)
  # Two flat-coloured shots per clip: easy structure a few dozen steps can start to fit.
  colours = rng.uniform(-1, 1, (4, 2, 1, 1, 1, 3)).astype(np.float32)
  video = np.repeat(np.broadcast_to(colours, (4, 2, 1, 32, 32, 3)), 8, axis=2).reshape(
    4, 16, 32, 32, 3
  )
  batch = {
    "video": jnp.asarray(video),
    "captions": jnp.asarray(rng.integers(97, 122, (4, 2, 48)), jnp.uint8),
    "shot_bounds": jnp.asarray([[[0, 8], [8, 16]]] * 4, jnp.int32),
    "num_shots": jnp.full((4,), 2, jnp.int32),
  }
  losses = []
  with jax.set_mesh(mesh):
    for i in range(40):
      state, metrics = step(state, batch, jax.random.key(i % 4))
      losses.append(float(metrics["mse"]))
  assert np.mean(losses[-8:]) < 0.85 * np.mean(losses[:8]), losses  # no learning: ~1.0


def _oracle(attn: MoGAAttention, x, grid, shots, *, branches):
  """The paper's block assembled from dense masked attention: the module's own projections,
  norms and RoPE, then each branch as an explicit [N, N] mask, gate x MoGA, mean, o."""
  from pallas_kernels.block_sparse.reference import masked_attention_reference, shot_window_visible

  b, n, _ = x.shape
  heads = lambda t: t.reshape(b, n, attn.num_heads, attn.head_dim)
  angles = jnp.asarray(rope_angles(grid, attn.head_dim))
  q = apply_rope(heads(attn.norm_q(attn.q(x))), angles)
  k = apply_rope(heads(attn.norm_k(attn.k(x))), angles)
  v = heads(attn.v(x))
  scale = attn.head_dim**-0.5
  outs = []
  if "moga" in branches:
    routing = attn.router(x)
    ids, gate = routing.group_ids[..., 0], routing.gates[..., 0]  # shared: [B, N]
    same = (ids[:, :, None] == ids[:, None, :])[:, None]
    outs.append(masked_attention_reference(q, k, v, same, scale=scale) * gate[..., None, None])
  if "stga" in branches:
    seen = shot_window_visible(
      shots,
      grid_shape=grid,
      spatial_groups=attn.stga_windows,
      temporal_group=attn.stga_temporal_group,
      context_frames=attn.stga_context_frames,
    )
    outs.append(masked_attention_reference(q, k, v, seen, scale=scale))
  if "frame" in branches:
    frame = np.repeat(np.arange(grid[0]), grid[1] * grid[2])
    outs.append(
      masked_attention_reference(q, k, v, jnp.asarray(frame[:, None] == frame[None]), scale=scale)
    )
  return attn.o((sum(outs) / len(outs)).reshape(b, n, -1))


@pytest.mark.parametrize("branches", [("moga", "stga", "frame"), ("moga",), ("stga", "frame")])
def test_module_values_against_a_dense_masked_oracle(key, branches):
  """Several groups, the gate and each branch of the paper's block, through the tiled xla path,
  against dense masked attention. Catches the gate replaced by ones, a branch attending with
  the queries as keys, and any STGA mask error."""
  grid, shots = (5, 4, 6), jnp.array([[0, 0, 1, 1, 2], [0, 1, 1, 1, 1]], jnp.int32)
  attn = MoGAAttention(
    32,
    4,
    num_groups=3 if "moga" in branches else None,
    stga_windows=(2, 2) if "stga" in branches else None,
    frame_attention="frame" in branches,
    implementation="xla",
    rngs=nnx.Rngs(7),
  )
  if attn.router is not None:  # a sharper router than the init: gates well away from 1/3
    attn.router.proj.kernel[...] = 2.0 * jax.random.normal(
      jax.random.key(8), attn.router.proj.kernel.shape
    )
  x = jax.random.normal(key, (2, 120, 32))
  out, _ = attn(x, grid_shape=grid, frame_shot=shots)
  assert_close(out, _oracle(attn, x, grid, shots, branches=branches))
  if attn.router is not None:
    gates = attn.router(x).gates
    assert float(gates.max() - gates.min()) > 0.2  # the gate is not a constant


def test_router_learns_through_the_gate_alone(key):
  """Balance weight 0: the router's gradient comes only through gate x MoGA. It is non-zero
  and a small step against it lowers the task loss (ids unchanged). Catches a gate of ones."""
  grid = (4, 4, 4)
  attn = MoGAAttention(32, 4, num_groups=3, implementation="xla", rngs=nnx.Rngs(3))
  attn.router.proj.kernel[...] = 0.5 * jax.random.normal(
    jax.random.key(8), attn.router.proj.kernel.shape
  )
  x = jax.random.normal(key, (1, 64, 32))
  target = jax.random.normal(jax.random.key(9), (1, 64, 32))
  loss = lambda attn: jnp.mean((attn(x, grid_shape=grid)[0] - target) ** 2)
  grads = nnx.grad(loss)(attn)
  g = grads.router.proj.kernel[...]
  assert float(jnp.abs(g).max()) > 0
  ids = attn.router(x).group_ids
  before = float(loss(attn))
  attn.router.proj.kernel[...] = attn.router.proj.kernel[...] - 1e-4 * g / jnp.abs(g).max()
  np.testing.assert_array_equal(attn.router(x).group_ids, ids)
  assert float(loss(attn)) < before
