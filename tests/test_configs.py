"""The paper-recipe configs (stages, attention block fields), the learning-rate schedules and
the validation of the attention block's fields."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags
from flax import nnx
from ml_collections import ConfigDict, config_flags

from moga_jax.tools.flops import latent_and_token_grids
from moga_jax.train.config_files import load_config_module
from moga_jax.train.run_config import RunConfig, TrainConfig
from moga_jax.train.state import make_optimizer, make_schedule

wan1_3b_moga = load_config_module("wan1_3b_moga")
wan14b_moga_580k = load_config_module("wan14b_moga_580k")

ROOT = Path(__file__).parents[1]


def test_wan1_3b_stages_follow_the_paper():
  one, two = wan1_3b_moga.get_config("stage1"), wan1_3b_moga.get_config("stage2")
  assert wan1_3b_moga.get_config().to_dict() == one.to_dict()  # no suffix: stage 1
  # 3k optimizer updates on 10-s clips (16 fps), then 1k on 30-s clips, 8 clips each
  updates = lambda c: c.train.steps // c.train.grad_accum_steps
  assert (one.video.frames, updates(one)) == (157, 3_000)
  assert (two.video.frames, updates(two)) == (477, 1_000)
  for c in (one, two):
    assert c.train.batch_size * c.train.grad_accum_steps == 8
  assert [np.prod(latent_and_token_grids(c)[1]) for c in (one, two)] == [62_400, 187_200]
  assert one.model.to_dict() == two.model.to_dict()  # stage 2 loads stage 1's weights
  for c in (one, two):
    a = c.model.attention
    assert (a.num_groups, a.top_k, tuple(a.stga_windows), a.frame_attention) == (5, 1, (2, 2), True)
    assert a.per_head_router is False and a.balance_loss == "paper" and a.window is None
    assert a.combine == "mean" and a.stga_context_frames == 1
    assert c.diffusion.balance_weight == 0.1
    assert (c.train.schedule, c.train.learning_rate) == ("constant", 1e-5)
    assert (c.video.height, c.video.width, c.video.fps) == (480, 832, 16)
    assert c.video.shots > 1 and c.data.shots == c.video.shots  # multi-shot clips
    RunConfig.from_config_dict(c)
  with pytest.raises(ValueError, match="stage must be one of"):
    wan1_3b_moga.get_config("stage3")


def test_config_flag_suffix_picks_the_stage():
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values)
  values(["prog", f"--config={ROOT / 'configs' / 'wan1_3b_moga.py'}:stage2"])
  assert values.config.video.frames == 477 and values.config.sharding.tpu_slice == "v5e-32"


def test_580k_config_is_the_papers_minute_long_block():
  c = wan14b_moga_580k.get_config()
  a = c.model.attention
  assert (a.num_groups, tuple(a.stga_windows), a.frame_attention, a.per_head_router) == (
    20,
    (4, 4),
    True,
    False,
  )
  assert a.window is None and a.window_tile is None and a.balance_loss == "paper"
  assert c.diffusion.balance_weight == 0.1
  RunConfig.from_config_dict(c)


ONE_DEVICE_MESH = (
  "--config.sharding.mesh.data=-1",
  "--config.sharding.mesh.fsdp=1",
  "--config.sharding.mesh.context=1",
)


@pytest.mark.subprocess
@pytest.mark.parametrize(
  ("config", "message", "extra"),
  [
    ("wan1_3b_moga.py", "pass --init DIR", ONE_DEVICE_MESH),
    ("wan1_3b_moga.py:stage2", "pass --init DIR", ONE_DEVICE_MESH),
    ("wan1_3b.py", "pass --init DIR", ONE_DEVICE_MESH),
    # Each config's mesh is its TPU slice's: refused by name before anything is built.
    ("wan1_3b_moga.py", "uses 8 devices but 1 are available", ()),
    ("wan1_3b_moga.py:stage2", "uses 32 devices but 1 are available", ()),
    ("wan14b_moga_580k.py", "uses 64 devices but 1 are available", ()),
  ],
)
def test_every_wan_config_reaches_train_py_and_fails_with_a_named_error(
  config, message, extra, tmp_path
):
  """Each config has every section train.py reads (the 580K one once lacked data, sample and
  checkpoint_every and died in a bare AttributeError): without converted weights (or devices)
  it stops with one named line, exit 2 (train.py's main, in-process: tests/commands.py).
  tests/test_wan_pipeline.py trains them with --init."""
  from commands import run_command

  result = run_command(
    "moga_jax.cli.train",
    "train.py",
    [f"--config={ROOT / 'configs' / config}", "--workdir", str(tmp_path / "run"), *extra],
  )
  assert result.code == 2, result.err[-3000:]
  assert "train.py: error:" in result.err and message in result.err, result.err[-2000:]
  assert "Traceback" not in result.err


def _train(**overrides) -> TrainConfig:
  """A typed train section: tiny's, with these fields."""
  fields = load_config_module("tiny").get_config().train.to_dict()
  fields.update(
    steps=100,
    learning_rate=1e-3,
    warmup_steps=10,
    weight_decay=0.0,
    grad_clip=1.0,
    schedule="constant",
  )
  return TrainConfig.of({**fields, **overrides})


def test_constant_schedule_is_linear_warmup_then_flat():
  lr, warmup = 1e-5, 40
  schedule = make_schedule(_train(learning_rate=lr, warmup_steps=warmup))
  for step in (0, 1, 10, 39, 40, 41, 500, 10_000):
    assert float(schedule(step)) == pytest.approx(lr * min(step / warmup, 1.0), abs=1e-12)
  flat = make_schedule(_train(learning_rate=lr, warmup_steps=0))
  assert [float(flat(s)) for s in (0, 7, 10_000)] == pytest.approx([lr] * 3)


def test_cosine_schedule_is_the_default():
  fields = _train().as_dict()
  del fields["schedule"]  # configs that do not set it (tiny) get the cosine schedule
  cfg = TrainConfig.of(fields)
  want = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100, end_value=5e-5)
  for step in (0, 5, 10, 50, 100, 200):
    assert float(make_schedule(cfg)(step)) == pytest.approx(float(want(step)))


def test_bad_schedule_is_refused():
  with pytest.raises(
    ValueError,
    match=r"config.train.schedule must be one of \('constant', "
    r"'cosine'\), got 'linear'",
  ):
    make_schedule(_train(schedule="linear"))


def test_make_optimizer_applies_the_constant_schedule():
  """With a constant gradient Adam's bias-corrected step is 1 in magnitude, so the parameters
  move by exactly the schedule's rates: 0, lr/4, lr/2, 3lr/4, lr, lr, ... (warm-up of 4)."""
  lr = 1e-3
  model = nnx.Linear(3, 2, kernel_init=nnx.initializers.zeros_init(), rngs=nnx.Rngs(0))
  optimizer = make_optimizer(model, _train(learning_rate=lr, warmup_steps=4))
  grad_fn = nnx.grad(lambda m: jnp.sum(m.kernel[...]) + jnp.sum(m.bias[...]))
  for _ in range(6):
    optimizer.update(model, grad_fn(model))
  moved = -(0 + 0.25 + 0.5 + 0.75 + 1 + 1) * lr
  np.testing.assert_allclose(np.asarray(model.kernel[...]), moved, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(model.bias[...]), moved, rtol=1e-4)


def test_make_optimizer_clips_the_global_norm_and_decays_weights_decoupled():
  """Two AdamW steps by hand: gradients scaled to global norm grad_clip before Adam, and
  weight decay added to the update (lr x wd x param), not to the gradient. Kills a dropped or
  per-leaf clip and L2-style (coupled) decay."""
  lr, wd, clip, b1, b2, eps = 1e-2, 0.1, 1.0, 0.9, 0.999, 1e-8
  model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  model.kernel[...] = jnp.array([[1.0], [-2.0]])
  model.bias[...] = jnp.array([0.5])
  optimizer = make_optimizer(
    model, _train(learning_rate=lr, warmup_steps=0, weight_decay=wd, grad_clip=clip)
  )
  grads = [np.array([[3.0], [4.0]]), np.array([12.0])]  # global norm 13
  grads2 = [np.array([[-1.0], [0.5]]), np.array([0.25])]  # norm < clip: unclipped
  params = [np.array([[1.0], [-2.0]]), np.array([0.5])]
  mu = [np.zeros_like(p) for p in params]
  nu = [np.zeros_like(p) for p in params]
  for step, g in enumerate((grads, grads2), start=1):
    norm = np.sqrt(sum((x**2).sum() for x in g))
    g = [x * min(1.0, clip / norm) for x in g]
    mu = [b1 * m + (1 - b1) * x for m, x in zip(mu, g, strict=True)]
    nu = [b2 * n + (1 - b2) * x**2 for n, x in zip(nu, g, strict=True)]
    params = [
      p - lr * (m / (1 - b1**step) / (np.sqrt(n / (1 - b2**step)) + eps) + wd * p)
      for p, m, n in zip(params, mu, nu, strict=True)
    ]
    raw = [jnp.asarray(x / min(1.0, clip / norm), jnp.float32) for x in g]
    grad_fn = nnx.grad(
      lambda m, raw=raw: jnp.sum(m.kernel[...] * raw[0]) + jnp.sum(m.bias[...] * raw[1])
    )
    optimizer.update(model, grad_fn(model))
    np.testing.assert_allclose(np.asarray(model.kernel[...]), params[0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(model.bias[...]), params[1], rtol=1e-5)


def _linear_with_gradients(cfg: TrainConfig, gradients: list[float]):
  """A 1x1 linear layer (weight 1) updated once per given gradient; returns its weights after
  each update and the optimizer."""
  model = nnx.Linear(
    1, 1, use_bias=False, kernel_init=nnx.initializers.ones_init(), rngs=nnx.Rngs(0)
  )
  optimizer = make_optimizer(model, cfg)
  weights = []
  for g in gradients:
    optimizer.update(model, nnx.grad(lambda m, g=g: g * jnp.sum(m.kernel[...]))(model))
    weights.append(float(model.kernel[0, 0]))
  return weights, model, optimizer


def test_gradient_accumulation_is_one_update_from_the_mean_gradient():
  """grad_accum_steps = 2: the weight moves every second step, by the step plain AdamW takes on
  the two gradients' mean. Kills summing instead of averaging and updating every step."""
  grads = [0.3, 0.9, -0.4, 0.2]
  base = _train(learning_rate=0.1, warmup_steps=0, weight_decay=0.0, grad_clip=100.0)
  accumulated, _, _ = _linear_with_gradients(base.replace(grad_accum_steps=2), grads)
  plain, _, _ = _linear_with_gradients(base, [0.6, -0.1])  # the pairs' means
  np.testing.assert_allclose(accumulated, [1.0, plain[0], plain[0], plain[1]], rtol=1e-6)


def test_ema_of_the_weights_follows_its_formula_and_sampling_reads_it():
  """ema_decay = d: after each update ema = d ema + (1 - d) w, from the initial weights; the
  optimizer's state carries it (so checkpoints do) and sampling can put it into the model."""
  from moga_jax.train.ema import ema_below, load_averaged

  d = 0.8
  weights, model, optimizer = _linear_with_gradients(
    _train(learning_rate=0.1, warmup_steps=0, weight_decay=0.0, ema_decay=d), [0.5, -1.0, 2.0]
  )
  ema = 1.0
  for w in weights:
    ema = d * ema + (1 - d) * w
  assert abs(weights[-1] - ema) > 1e-3  # the test can tell the two apart
  load_averaged(model, ema_below(nnx.state(optimizer)))
  np.testing.assert_allclose(float(model.kernel[0, 0]), ema, rtol=1e-6)
  assert ema_below(nnx.state(make_optimizer(model, _train()))) is None


def _replace(section: ConfigDict, field: str, value) -> None:
  """Sets a field to a value of another type (ConfigDict refuses that for assignment; a config
  written in Python can still hold it)."""
  del section[field]
  section[field] = value


@pytest.mark.parametrize(
  "field, value, match",
  [
    (
      "stga_windows",
      (2,),
      r"config.model.attention.stga_windows must be None or two positive "
      r"ints",
    ),
    ("stga_windows", (0, 2), r"config.model.attention.stga_windows must be None or two positive"),
    ("stga_windows", (2.0, 2), r"config.model.attention.stga_windows must be None or two"),
    (
      "stga_windows",
      (31, 2),
      r"config.model.attention.stga_windows \(31, 2\) cuts each latent "
      r"frame of 30x52 tokens into more windows",
    ),
    ("stga_temporal_group", 0, r"config.model.attention.stga_temporal_group must be >= 1, got 0"),
    ("stga_temporal_group", 2.5, r"config.model.attention.stga_temporal_group must be an int"),
    ("stga_context_frames", -1, r"config.model.attention.stga_context_frames must be >= 0"),
    ("stga_context_frames", None, r"config.model.attention.stga_context_frames must be an int"),
    ("frame_attention", 1, r"config.model.attention.frame_attention must be True or False"),
    ("per_head_router", "no", r"config.model.attention.per_head_router must be True or False"),
    (
      "combine",
      "max",
      r"config.model.attention.combine must be one of \('mean', 'sum'\), got "
      r"'max'",
    ),
    (
      "balance_loss",
      "l2",
      r"config.model.attention.balance_loss must be one of \('paper', "
      r"'switch'\)",
    ),
  ],
)
def test_bad_attention_fields_name_the_field(field, value, match):
  cfg = wan1_3b_moga.get_config()
  _replace(cfg.model.attention, field, value)
  with pytest.raises(ValueError, match=match):
    RunConfig.from_config_dict(cfg)


@pytest.mark.parametrize(
  "section, field, value, match",
  [
    (
      "train",
      "schedule",
      "linear",
      r"config.train.schedule must be one of \('constant', "
      r"'cosine'\), got 'linear'",
    ),
    ("diffusion", "balance_weight", -0.1, r"config.diffusion.balance_weight must be a number >= 0"),
  ],
)
def test_bad_training_fields_name_the_field(section, field, value, match):
  cfg = wan1_3b_moga.get_config()
  cfg[section][field] = value
  with pytest.raises(ValueError, match=match):
    RunConfig.from_config_dict(cfg)


def test_good_attention_variants_pass():
  cfg = wan1_3b_moga.get_config()
  a = cfg.model.attention
  a.stga_windows, a.stga_temporal_group, a.stga_context_frames = None, None, 0
  RunConfig.from_config_dict(cfg)
  _replace(a, "stga_windows", [3, 4])  # ml_collections may hand tuples back as lists
  _replace(a, "stga_temporal_group", 8)
  a.combine, a.balance_loss, a.frame_attention = "sum", "switch", False
  RunConfig.from_config_dict(cfg)
  for name in (
    "stga_windows",
    "stga_temporal_group",
    "stga_context_frames",
    "frame_attention",
    "combine",
    "balance_loss",
  ):
    del a[name]  # configs without the new fields (block defaults) still validate
  RunConfig.from_config_dict(cfg)


@pytest.mark.parametrize("section", ["model", "diffusion", "train", "sharding", "sample", "data"])
def test_a_missing_section_is_named(section):
  c = load_config_module("tiny").get_config()
  del c[section]
  with pytest.raises(ValueError, match=rf"config is missing section\(s\) \['{section}"):
    RunConfig.from_config_dict(c)


def test_the_model_configs_share_one_base():
  """tiny and the Wan configs take the attention block, loss and loop knobs from base.py and
  differ from it only where they say so."""
  base = load_config_module("base").get_config(num_groups=4).to_dict()
  tiny = load_config_module("tiny").get_config().to_dict()
  wan = wan1_3b_moga.get_config().to_dict()
  assert tiny["model"]["attention"] == base["model"]["attention"]
  assert wan["model"]["attention"] == base["model"]["attention"] | {"num_groups": 5}
  for section in ("diffusion", "distributed"):
    assert tiny[section] == wan[section] == base[section]
  # The Wan configs lay their mesh out for a TPU slice (and accumulate gradients to match).
  assert tiny["sharding"] == base["sharding"]
  assert wan["sharding"]["rules"] == base["sharding"]["rules"]
  assert wan["sharding"]["tpu_slice"] == "v5e-8"
  per_slice = {"batch_size", "grad_accum_steps", "checkpoint_every"}
  shared_train = {k: v for k, v in base["train"].items() if k not in per_slice}
  assert tiny["train"]["grad_accum_steps"] == base["train"]["grad_accum_steps"]
  for cfg in (tiny, wan):
    assert {k: cfg["train"][k] for k in shared_train} == shared_train
