"""Config validation: clear errors before anything is built or compiled."""

from __future__ import annotations

import numbers

from moga_jax.diffusion.flow import SOLVERS
from moga_jax.model.config import COMBINES
from moga_jax.model.remat import normalise_remat
from moga_jax.model.routing import BALANCE_LOSSES
from moga_jax.parallel.sharding import SHARE_AXIS, ShardingRules, axes_size, resolve_mesh_shape
from moga_jax.parallel.tpu_slices import parse_slice
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.validation import check_int


def _positive(name: str, value) -> None:
  check_int(f"config.{name}", value)


# Sections train.py and sample.py read from every config (configs/base.py provides them).
REQUIRED_SECTIONS = ("model", "diffusion", "train", "sharding", "sample")


def validate_config(cfg) -> None:
  """Checks the fields train.py and sample.py rely on; raises ValueError (TypeError for a
  non-int count) naming the field. Configs with a `video` section (Wan-scale: pixels through
  the Wan VAE) are checked against its strides, the others against their `data` section."""
  missing = [s for s in REQUIRED_SECTIONS if s not in cfg]
  if "video" not in cfg and "data" not in cfg:
    missing.append("data (or video)")
  if missing:
    raise ValueError(
      f"config is missing section(s) {missing}; start from configs/base.py "
      "(load_config_module('base').get_config(...)) or a named config"
    )
  m = cfg.model
  names = [
    "model.dim",
    "model.ffn_dim",
    "model.num_layers",
    "model.num_heads",
    "model.text_dim",
    "train.steps",
    "train.batch_size",
  ]
  names += [
    f"{section}.{field}"
    for section, field in (
      ("train", "checkpoint_every"),
      ("train", "log_every"),
      ("sample", "steps"),
    )
    if section in cfg and field in cfg[section]
  ]
  for name in names:
    section, field = name.split(".")
    _positive(name, cfg[section][field])
  if "data" in cfg:
    _check_data_reading(cfg.data)
  grid = latent_grid(cfg)
  patch = tuple(m.patch)
  if len(patch) != 3 or any(g % p for g, p in zip(grid, patch, strict=True)):
    raise ValueError(
      f"the latent grid (frames, height, width) = {grid} must be divisible by "
      f"config.model.patch {patch}"
    )
  if m.dim % m.num_heads:
    raise ValueError(
      f"config.model.num_heads ({m.num_heads}) must divide config.model.dim ({m.dim})"
    )
  head_dim = m.dim // m.num_heads
  if head_dim % 2 or head_dim < 6:
    raise ValueError(f"head_dim = dim / num_heads = {head_dim} must be even and >= 6 (3D RoPE)")
  a = m.attention
  if a.num_groups is not None:
    _positive("model.attention.num_groups", a.num_groups)
    if not 1 <= a.top_k <= a.num_groups:
      raise ValueError(
        f"config.model.attention.top_k must be in [1, num_groups={a.num_groups}], got {a.top_k}"
      )
  _check_block(a, tuple(g // q for g, q in zip(grid, patch, strict=True)))
  if (a.window is None) != (a.window_tile is None):
    raise ValueError(
      "config.model.attention.window and window_tile must both be set or both be None"
    )
  try:
    normalise_remat(m.get("remat", False))
  except ValueError as err:
    raise ValueError(f"config.model.{err}") from None
  chunk = m.get("ffn_token_chunk")
  if chunk is not None:
    _positive("model.ffn_token_chunk", chunk)
  if m.scan_layers and m.dense_layers and a.num_groups is not None:
    raise ValueError(
      "config.model.scan_layers needs identical blocks; clear "
      f"config.model.dense_layers ({tuple(m.dense_layers)}) to scan"
    )
  if any(not 0 <= i < m.num_layers for i in m.dense_layers):
    raise ValueError(
      f"config.model.dense_layers {tuple(m.dense_layers)} must index blocks 0..{m.num_layers - 1}"
    )
  if not 0.0 <= cfg.diffusion.caption_dropout < 1.0:
    raise ValueError(
      f"config.diffusion.caption_dropout must be in [0, 1), got {cfg.diffusion.caption_dropout}"
    )
  weight = cfg.diffusion.get("balance_weight", 0.0)
  if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or weight < 0:
    raise ValueError(f"config.diffusion.balance_weight must be a number >= 0, got {weight!r}")
  for field in ("dtype", "param_dtype"):
    if m.get(field, "float32") not in DTYPES:
      raise ValueError(f"config.model.{field} must be one of {DTYPES}, got {m.get(field)!r}")
  accum = cfg.train.get("grad_accum_steps", 1)
  if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
    raise ValueError(f"config.train.grad_accum_steps must be an int >= 1, got {accum!r}")
  mu_dtype = cfg.train.get("adam_mu_dtype")
  if mu_dtype not in (None, "bfloat16", "float32"):
    raise ValueError(
      f"config.train.adam_mu_dtype must be None, 'float32' or 'bfloat16', got {mu_dtype!r}"
    )
  decay = cfg.train.get("ema_decay", 0.0)
  if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= decay < 1.0:
    raise ValueError(f"config.train.ema_decay must be in [0, 1) (0: no EMA), got {decay!r}")
  skip = cfg.train.get("skip_nonfinite_steps", 0)
  if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
    raise ValueError(f"config.train.skip_nonfinite_steps must be an int >= 0, got {skip!r}")
  solver = cfg.sample.get("solver", "euler") if "sample" in cfg else "euler"
  if solver not in SOLVERS:
    raise ValueError(f"config.sample.solver must be one of {SOLVERS}, got {solver!r}")
  schedule = cfg.train.get("schedule", "cosine")
  if schedule not in SCHEDULES:
    raise ValueError(f"config.train.schedule must be one of {SCHEDULES}, got {schedule!r}")


DTYPES = ("float32", "bfloat16")  # config.model.dtype (compute) and .param_dtype (storage)
SCHEDULES = ("constant", "cosine")  # train.schedule (moga_jax.train.state.make_schedule)


def _check_block(a, tokens: tuple[int, int, int]) -> None:
  """The attention block's fields (the paper's: MoGA + STGA + per-frame attention); fields a
  config leaves out take the block's defaults. tokens: the (T, H, W) token grid."""
  name = "config.model.attention."
  windows = a.get("stga_windows")
  if windows is not None:
    if (
      not isinstance(windows, (tuple, list))
      or len(windows) != 2
      or any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in windows)
    ):
      raise ValueError(
        f"{name}stga_windows must be None or two positive ints (rows, columns "
        f"of spatial windows per latent frame), got {windows!r}"
      )
    if windows[0] > tokens[1] or windows[1] > tokens[2]:
      raise ValueError(
        f"{name}stga_windows {tuple(windows)} cuts each latent frame of "
        f"{tokens[1]}x{tokens[2]} tokens into more windows than it has rows or "
        "columns"
      )
  group = a.get("stga_temporal_group")
  if group is not None and (
    isinstance(group, bool) or not isinstance(group, numbers.Integral) or group < 1
  ):
    raise ValueError(
      f"{name}stga_temporal_group must be None (a temporal group is a whole "
      f"shot) or a positive int (frames per group), got {group!r}"
    )
  context = a.get("stga_context_frames", 1)
  if isinstance(context, bool) or not isinstance(context, numbers.Integral) or context < 0:
    raise ValueError(f"{name}stga_context_frames must be an int >= 0, got {context!r}")
  for flag in ("frame_attention", "per_head_router"):
    if flag in a and not isinstance(a[flag], bool):
      raise ValueError(f"{name}{flag} must be True or False, got {a[flag]!r}")
  combine = a.get("combine", "mean")
  if combine not in COMBINES:
    raise ValueError(f"{name}combine must be one of {COMBINES}, got {combine!r}")
  balance = a.get("balance_loss", "paper")
  if balance not in BALANCE_LOSSES:
    raise ValueError(f"{name}balance_loss must be one of {BALANCE_LOSSES}, got {balance!r}")
  options = a.get("kernel_options")
  try:
    KernelOptions.of(options.to_dict() if hasattr(options, "to_dict") else options)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name}kernel_options: {e}") from None


def _check_data_reading(d) -> None:
  """How source videos are read: data.fps (a positive rate) and data.fit (a FIT_MODES name)."""
  from moga_jax.data.video_io import FIT_MODES  # PyAV, only for configs that read videos

  fps = d.get("fps")
  if isinstance(fps, bool) or not isinstance(fps, int | float) or not fps > 0:
    raise ValueError(f"config.data.fps must be a positive number, got {fps!r}")
  fit = d.get("fit", "crop")
  if fit not in FIT_MODES:
    raise ValueError(f"config.data.fit must be one of {FIT_MODES}, got {fit!r}")


def latent_grid(cfg) -> tuple[int, int, int]:
  """(frames, height, width) of the latents a config's videos become, its fields checked."""
  return _video_grid(cfg) if "video" in cfg else _data_grid(cfg)


def _data_grid(cfg) -> tuple[int, int, int]:
  """Latent grid of a `data` config (space-to-depth stand-in latents)."""
  d, m = cfg.data, cfg.model
  for name in (
    "data.shots",
    "data.frames_per_shot",
    "data.height",
    "data.width",
    "data.max_shots",
    "data.caption_len",
    "model.latent_factor",
  ):
    section, field = name.split(".")
    _positive(name, cfg[section][field])
  if d.shots > d.max_shots:
    raise ValueError(
      f"config.data.shots ({d.shots}) must be <= config.data.max_shots ({d.max_shots})"
    )
  if m.caption_len != d.caption_len:
    raise ValueError(
      f"config.model.caption_len ({m.caption_len}) must equal "
      f"config.data.caption_len ({d.caption_len})"
    )
  f = m.latent_factor
  if d.height % f or d.width % f:
    raise ValueError(
      f"config.data.height x width ({d.height}x{d.width}) must be divisible by "
      f"config.model.latent_factor ({f})"
    )
  return d.shots * d.frames_per_shot, d.height // f, d.width // f


def _video_grid(cfg) -> tuple[int, int, int]:
  """Latent grid of a `video` config: 1 + st*k frames through the Wan VAE's (st, sh, sw)."""
  v = cfg.video
  for name in ("frames", "height", "width", "fps", "shots", "caption_len"):
    _positive(f"video.{name}", v[name])
  stride = tuple(v.vae_stride)
  if len(stride) != 3 or any(not isinstance(s, int) or s < 1 for s in stride):
    raise ValueError(f"config.video.vae_stride must be three positive ints (t, h, w), got {stride}")
  st, sh, sw = stride
  if (v.frames - 1) % st:
    raise ValueError(f"config.video.frames = {v.frames}: the Wan VAE needs 1 + {st}k frames")
  if v.height % sh or v.width % sw:
    raise ValueError(
      f"config.video.height x width ({v.height}x{v.width}) must be divisible by "
      f"the VAE's spatial stride {sh}x{sw}"
    )
  return (v.frames - 1) // st + 1, v.height // sh, v.width // sw


def validate_sharding(cfg, device_count: int) -> dict[str, int]:
  """Checks the mesh and rules against the model and batch before anything compiles; returns
  the resolved mesh shape. Ulysses attention gives each device whole sequences for
  num_heads / (context x tensor) heads, so that division must be exact."""
  s, m = cfg.sharding, cfg.model
  if s.get("tpu_slice"):
    try:
      parse_slice(s.tpu_slice)
    except ValueError as err:
      raise ValueError(f"config.sharding.tpu_slice: {err}") from None
  mesh = resolve_mesh_shape(dict(s.mesh), device_count)
  rules = ShardingRules.from_config(s.rules)
  size = lambda logical: axes_size(mesh, rules.mesh_axes(logical))
  seq, heads, batch = size("activation_length"), size("activation_heads"), size("activation_batch")
  shares = mesh[SHARE_AXIS] if SHARE_AXIS in rules.mesh_axes("activation_length") else 1
  ulysses = seq // shares
  if m.num_heads % (ulysses * heads):
    divisors = [d for d in range(1, m.num_heads + 1) if m.num_heads % (d * heads) == 0]
    raise ValueError(
      f"config.model.num_heads ({m.num_heads}) must be divisible by the context axes x head "
      f"axes of the mesh ({ulysses} x {heads} = {ulysses * heads}): Ulysses sequence "
      f"parallelism splits the heads over both inside attention; context can be one of "
      f"{divisors}, and sharding.mesh.share splits the sequence further; mesh {mesh}"
    )
  if shares > 1:
    a = m.attention
    sparse = a.num_groups is not None or a.stga_windows is not None or a.frame_attention
    if not sparse or a.get("window") is not None or tuple(m.dense_layers):
      raise ValueError(
        f"sharding.mesh.share = {shares} splits attention by MoGA's groups, STGA's windows "
        "and frames; it needs every block sparse, without the 3D window branch "
        f"(model.dense_layers = {tuple(m.dense_layers)}, model.attention.window = "
        f"{a.get('window')}); set sharding.mesh.share=1"
      )
  if cfg.train.batch_size % batch:
    raise ValueError(
      f"config.train.batch_size ({cfg.train.batch_size}) must be divisible by the "
      f"batch axes of the mesh ({batch} devices); mesh {mesh}"
    )
  tokens = _tokens(cfg)
  if tokens is not None and tokens % seq:
    raise ValueError(
      f"the {tokens} video tokens per sample must be divisible by the sequence "
      f"axes of the mesh (context x share = {seq}); mesh {mesh}"
    )
  return mesh


def _tokens(cfg) -> int:
  """Video tokens per sample: the latent grid divided by the patch."""
  frames, height, width = latent_grid(cfg)
  pt, ph, pw = tuple(cfg.model.patch)
  return (frames // pt) * (height // ph) * (width // pw)
