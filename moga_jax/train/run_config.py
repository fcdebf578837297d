"""Typed, frozen run configs: what training, data, sampling and the mesh are built from.

Config files are ml_collections ConfigDicts (`configs/`): convenient on the command line, but
untyped (overridden tuples come back as lists, a misspelt field is silently a new one).
`RunConfig.from_config_dict(cfg)` is the one place a ConfigDict becomes typed: each section
becomes its frozen, hashable dataclass (`TrainConfig`, `DataConfig`, `VideoConfig`,
`DiffusionConfig`, `SampleConfig`, `ShardingConfig`, `DistributedConfig`; the model section
`moga_jax.model.config.DiTConfig`), unknown keys of a section are refused with the known ones,
and every value is checked against the others (latent grid, patch, mesh) before anything is
built or traced. Every refusal is a `moga_jax.errors.ConfigError` naming `config.section.key`,
what it got and what it needs.

Defaults have one home each: a knob that configs/base.py (or a product config) sets has no
default here (a section without it is refused by name); a dataclass default is a knob no config
file sets. Functions take the section they use (`make_optimizer(model, run.train)`,
`prepare_data(run.data, workdir)`, ...). Entry points that code outside the typed world still
calls with a ConfigDict convert once, at their top, with `as_run_config` (the whole config) or
`as_section` (one section).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

from ml_collections import ConfigDict, FrozenConfigDict

from moga_jax.diffusion.flow import SOLVERS
from moga_jax.errors import ConfigError
from moga_jax.model.config import AttentionConfig, DiTConfig
from moga_jax.parallel import axes
from moga_jax.parallel.sharding import (
  MESH_AXES,
  SHARE_AXIS,
  ShardingRules,
  axes_size,
  resolve_mesh_shape,
)

PIPELINES = ("tiny", "wan")  # config.pipeline: the stand-in product or Wan 2.1
DTYPES = ("float32", "bfloat16")  # config.model.dtype (compute) and .param_dtype (storage)
SCHEDULES = ("constant", "cosine")  # config.train.schedule (moga_jax.train.state.make_schedule)
ADAM_MU_DTYPES = (None, "float32", "bfloat16")

# The model section's keys: DiTConfig's (but out_channels, which is in_channels) and the tiny
# stand-in's text encoder and pixel fold (moga_jax.model.text_to_video.TextToVideo).
TINY_MODEL_KEYS = ("latent_factor", "caption_len", "text_layers")
MODEL_KEYS = (
  tuple(f.name for f in dataclasses.fields(DiTConfig) if f.name != "out_channels") + TINY_MODEL_KEYS
)


def _plain(value):
  """A config value as plain, hashable Python: lists -> tuples, ConfigDicts -> dicts."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return tuple(_plain(v) for v in value)
  return value


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(path: str, value, minimum: int = 1) -> None:
  if not _is_int(value):
    raise ConfigError(f"config.{path} must be an int, got {type(value).__name__} {value!r}")
  if value < minimum:
    raise ConfigError(f"config.{path} must be >= {minimum}, got {value}")


def _number(path: str, value, *, low: float | None = None) -> None:
  if not _is_number(value) or (low is not None and value < low):
    needs = "a number" if low is None else f"a number >= {low}"
    raise ConfigError(f"config.{path} must be {needs}, got {value!r}")


def _one_of(path: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(f"config.{path} must be one of {tuple(choices)}, got {value!r}")


def _bool(path: str, value) -> None:
  if not isinstance(value, bool):
    raise ConfigError(f"config.{path} must be True or False, got {value!r}")


def _str(path: str, value) -> None:
  if not isinstance(value, str):
    raise ConfigError(f"config.{path} must be a string, got {type(value).__name__} {value!r}")


class _Section:
  """A config section as a frozen dataclass: `of` turns a mapping into it (refusing unknown
  keys and, for knobs without a default here, missing ones), `__post_init__` checks values."""

  SECTION: ClassVar[str]

  @classmethod
  def of(cls, section):
    """section as this dataclass: itself if it is one, else a mapping of its fields (a
    ConfigDict section) checked by name."""
    if isinstance(section, cls):
      return section
    if not isinstance(section, Mapping) and not hasattr(section, "keys"):
      raise ConfigError(
        f"config.{cls.SECTION} must be a section (a mapping), got {type(section).__name__}"
      )
    fields = dataclasses.fields(cls)
    known = [f.name for f in fields]
    given = list(section.keys())
    unknown = sorted(set(given) - set(known))
    if unknown:
      raise ConfigError(
        f"config.{cls.SECTION} has unknown key(s) {unknown}; known: {sorted(known)}"
      )
    required = [
      f.name
      for f in fields
      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in given]
    if missing:
      raise ConfigError(
        f"config.{cls.SECTION} is missing {missing}; start from configs/base.py "
        "(load_config_module('base').get_config(...)) or a named config"
      )
    return cls(**{k: cls._convert(k, _plain(section[k])) for k in given})

  @classmethod
  def _convert(cls, key: str, value):
    return value

  def as_dict(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
  """The `train` section: steps (each of batch_size clips; grad_accum_steps of them make one
  optimizer update, which the schedule, warm-up, clipping and EMA count), AdamW and its
  learning-rate schedule, checkpoints, metric fetches and the non-finite step guard."""

  SECTION: ClassVar[str] = "train"

  steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int
  weight_decay: float
  grad_clip: float
  checkpoint_every: int
  keep_checkpoints: int
  log_every: int  # steps between host fetches of the metrics (each fetch syncs)
  skip_nonfinite_steps: int  # > 0: drop up to that many non-finite steps, then stop
  grad_accum_steps: int
  adam_mu_dtype: str | None  # Adam's first moment: None (float32) or "bfloat16"
  ema_decay: float  # > 0: keep an EMA of the weights (0: none)
  # "constant": linear warm-up then flat (the paper); "cosine": warm-up then decay to 5%.
  schedule: str = "cosine"

  def __post_init__(self):
    p = "train."
    for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
      _int(p + name, getattr(self, name))
    _int(p + "grad_accum_steps", self.grad_accum_steps)
    _int(p + "warmup_steps", self.warmup_steps, minimum=0)
    _int(p + "skip_nonfinite_steps", self.skip_nonfinite_steps, minimum=0)
    _number(p + "learning_rate", self.learning_rate, low=0.0)
    _number(p + "weight_decay", self.weight_decay, low=0.0)
    _number(p + "grad_clip", self.grad_clip, low=0.0)
    _one_of(p + "adam_mu_dtype", self.adam_mu_dtype, ADAM_MU_DTYPES)
    if not (_is_number(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
      raise ConfigError(
        f"config.train.ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay!r}"
      )
    _one_of(p + "schedule", self.schedule, SCHEDULES)

  @property
  def updates(self) -> int:
    """Optimizer updates over the run."""
    return self.steps // self.grad_accum_steps


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(_Section):
  """The `diffusion` section: the flow-matching loss. shift: the timestep shift (Wan: 3.0 at
  480p); caption_dropout: the fraction of samples trained on the empty caption (for guidance);
  balance_weight: the group balancing loss's weight (the paper's alpha)."""

  SECTION: ClassVar[str] = "diffusion"

  shift: float
  caption_dropout: float
  balance_weight: float

  def __post_init__(self):
    if not (_is_number(self.shift) and self.shift > 0):
      raise ConfigError(f"config.diffusion.shift must be a number > 0, got {self.shift!r}")
    if not (_is_number(self.caption_dropout) and 0.0 <= self.caption_dropout < 1.0):
      raise ConfigError(
        f"config.diffusion.caption_dropout must be in [0, 1), got {self.caption_dropout!r}"
      )
    if not (_is_number(self.balance_weight) and self.balance_weight >= 0):
      raise ConfigError(
        f"config.diffusion.balance_weight must be a number >= 0, got {self.balance_weight!r}"
      )


@dataclasses.dataclass(frozen=True)
class SampleConfig(_Section):
  """The `sample` section: the sampler (solver, steps, classifier-free guidance, seed) and, for
  Wan, the negative prompt and umT5's dtype (None where the tiny pipeline has no such thing)."""

  SECTION: ClassVar[str] = "sample"

  seed: int
  steps: int
  guidance: float
  solver: str  # "euler" or "unipc" (Wan's multistep solver)
  negative_prompt: str | None = None  # Wan: the unconditional branch's caption
  text_encoder_dtype: str | None = None  # Wan: umT5's parameter dtype

  def __post_init__(self):
    _int("sample.seed", self.seed, minimum=0)
    _int("sample.steps", self.steps)
    _number("sample.guidance", self.guidance)
    _one_of("sample.solver", self.solver, SOLVERS)
    if self.negative_prompt is not None:
      _str("sample.negative_prompt", self.negative_prompt)
    _one_of("sample.text_encoder_dtype", self.text_encoder_dtype, (None, *DTYPES))


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
  """The `data` section: where the training clips come from and how they are read (both
  pipelines prepare videos with it; moga_jax.data.prepare). Clips are cut to `num_frames` where
  set (Wan's 1 + 4k frames), else to shots x frames_per_shot."""

  SECTION: ClassVar[str] = "data"

  source_dir: str  # mp4s + captions.jsonl; "": synthetic clips, made on first use
  dataset_dir: str  # the prepared dataset; "": next to the source
  synthetic_videos: int
  shots: int
  frames_per_shot: int
  height: int
  width: int
  fps: float
  fit: str  # other aspect ratios: "crop", "pad" or "stretch"
  allow_placeholder_captions: bool
  max_shots: int
  caption_len: int  # UTF-8 bytes kept per caption
  subject_scale: float  # synthetic clips: the subject's radius / the frame's smaller side
  num_frames: int | None = None  # Wan configs: the clip's frames (1 + 4k)

  def __post_init__(self):
    p = "data."
    _str(p + "source_dir", self.source_dir)
    _str(p + "dataset_dir", self.dataset_dir)
    for name in (
      "synthetic_videos",
      "shots",
      "frames_per_shot",
      "height",
      "width",
      "max_shots",
      "caption_len",
    ):
      _int(p + name, getattr(self, name))
    if self.num_frames is not None:
      _int(p + "num_frames", self.num_frames)
    if self.shots > self.max_shots:
      raise ConfigError(
        f"config.data.shots ({self.shots}) must be <= config.data.max_shots ({self.max_shots})"
      )
    if not (_is_number(self.fps) and self.fps > 0):
      raise ConfigError(f"config.data.fps must be a positive number, got {self.fps!r}")
    from moga_jax.data.video_io import FIT_MODES  # PyAV: only where videos are read

    _one_of(p + "fit", self.fit, FIT_MODES)
    _bool(p + "allow_placeholder_captions", self.allow_placeholder_captions)
    _number(p + "subject_scale", self.subject_scale, low=0.0)

  @property
  def frames(self) -> int:
    """Frames per training clip."""
    return self.num_frames or self.shots * self.frames_per_shot


@dataclasses.dataclass(frozen=True)
class VideoConfig(_Section):
  """The `video` section of a Wan config: one sample's pixels (frames x height x width at fps),
  its shots (training clips; sampling takes one per prompt), the Wan VAE's strides and umT5's
  tokens per shot caption."""

  SECTION: ClassVar[str] = "video"

  frames: int
  height: int
  width: int
  fps: int
  shots: int
  vae_stride: tuple[int, int, int]
  caption_len: int

  def __post_init__(self):
    for name in ("frames", "height", "width", "fps", "shots", "caption_len"):
      _int(f"video.{name}", getattr(self, name))
    stride = self.vae_stride
    if not (
      isinstance(stride, tuple) and len(stride) == 3 and all(_is_int(s) and s >= 1 for s in stride)
    ):
      raise ConfigError(
        f"config.video.vae_stride must be three positive ints (t, h, w), got {stride!r}"
      )
    st, sh, sw = stride
    if (self.frames - 1) % st:
      raise ConfigError(f"config.video.frames = {self.frames}: the Wan VAE needs 1 + {st}k frames")
    if self.height % sh or self.width % sw:
      raise ConfigError(
        f"config.video.height x width ({self.height}x{self.width}) must be divisible by "
        f"the VAE's spatial stride {sh}x{sw}"
      )

  @property
  def latent_grid(self) -> tuple[int, int, int]:
    """(frames, height, width) of the latents: 1 + st*k frames through the VAE's strides."""
    st, sh, sw = self.vae_stride
    return (self.frames - 1) // st + 1, self.height // sh, self.width // sw


@dataclasses.dataclass(frozen=True)
class ShardingConfig(_Section):
  """The `sharding` section: the mesh's axis sizes (one may be -1: the devices left), the
  logical axis rules (moga_jax.parallel.axes names -> mesh axes) and the TPU slice the mesh is
  laid out for ("" for none)."""

  SECTION: ClassVar[str] = "sharding"

  mesh: tuple[tuple[str, int], ...]
  rules: ShardingRules
  tpu_slice: str = ""

  def __post_init__(self):
    mesh = self.mesh.items() if isinstance(self.mesh, Mapping) else self.mesh
    mesh = tuple((str(a), n) for a, n in mesh)
    object.__setattr__(self, "mesh", mesh)
    unknown = sorted({a for a, _ in mesh} - set(MESH_AXES))
    if unknown:
      raise ConfigError(
        f"config.sharding.mesh: mesh axes {unknown} are not mesh axes; use {MESH_AXES}"
      )
    for a, n in mesh:
      if not _is_int(n) or (n < 1 and n != -1):
        raise ConfigError(
          f"config.sharding.mesh.{a} must be an int >= 1 or -1 (all devices left), got {n!r}"
        )
    if sum(n == -1 for _, n in mesh) > 1:
      raise ConfigError(f"config.sharding.mesh {dict(mesh)}: at most one axis may be -1")
    if not isinstance(self.rules, ShardingRules):
      try:
        object.__setattr__(self, "rules", ShardingRules.from_config(self.rules))
      except (TypeError, ValueError) as err:
        raise ConfigError(f"config.sharding.rules: {err}") from None
    _str("sharding.tpu_slice", self.tpu_slice)
    if self.tpu_slice:
      from moga_jax.parallel.tpu_slices import parse_slice

      try:
        parse_slice(self.tpu_slice)
      except ValueError as err:
        raise ConfigError(f"config.sharding.tpu_slice: {err}") from None

  @property
  def mesh_shape(self) -> dict[str, int]:
    """The mesh's axis sizes as given (-1 possible), every mesh axis named."""
    return {a: 1 for a in MESH_AXES} | dict(self.mesh)

  def with_mesh(self, mesh: Mapping[str, int]) -> ShardingConfig:
    return dataclasses.replace(self, mesh=tuple(dict(mesh).items()))

  def resolve(self, device_count: int) -> dict[str, int]:
    """The mesh shape for device_count devices (the -1 axis filled)."""
    try:
      return resolve_mesh_shape(dict(self.mesh), device_count)
    except ValueError as err:
      raise ConfigError(f"config.sharding.mesh: {err}") from None


@dataclasses.dataclass(frozen=True)
class DistributedConfig(_Section):
  """The `distributed` section: jax.distributed.initialize()'s arguments (empty / 0 / -1: JAX
  detects them); it runs when `initialize` or JAX_COORDINATOR_ADDRESS is set."""

  SECTION: ClassVar[str] = "distributed"

  initialize: bool
  coordinator_address: str
  num_processes: int
  process_id: int

  def __post_init__(self):
    _bool("distributed.initialize", self.initialize)
    _str("distributed.coordinator_address", self.coordinator_address)
    _int("distributed.num_processes", self.num_processes, minimum=0)
    _int("distributed.process_id", self.process_id, minimum=-1)


# Sections every run config has; `data` too (both pipelines prepare videos), `video` for Wan.
SECTIONS = {
  "train": TrainConfig,
  "diffusion": DiffusionConfig,
  "sample": SampleConfig,
  "sharding": ShardingConfig,
  "distributed": DistributedConfig,
  "data": DataConfig,
  "video": VideoConfig,
}
REQUIRED_SECTIONS = ("model", "diffusion", "train", "sharding", "sample", "distributed", "data")
TOP_LEVEL_KEYS = ("pipeline", "seed", "stage", "model", *SECTIONS)


def _attention_error(err: Exception) -> ConfigError:
  """An AttentionConfig / DiTConfig refusal (which names the field first) as a ConfigError
  naming config.model[.attention].field."""
  return _prefixed(err, "model.attention", {f.name for f in dataclasses.fields(AttentionConfig)})


def _prefixed(err: Exception, section: str, fields: set[str]) -> ConfigError:
  message = str(err)
  first = message.split(" ", 1)[0].split("=", 1)[0]
  if first in fields:
    return ConfigError(f"config.{section}.{message}")
  return ConfigError(f"config.{section}: {message}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole run, typed: which product (`pipeline`), the seed, the model (`model`: the DiT's
  settings; `model_section`: the section as given, frozen, which the tiny TextToVideo and the
  checkpoints' model record read), and one dataclass per section. Build it with
  `from_config_dict` (or `as_run_config`)."""

  pipeline: str
  seed: int
  model: DiTConfig
  model_section: FrozenConfigDict
  train: TrainConfig
  diffusion: DiffusionConfig
  sample: SampleConfig
  sharding: ShardingConfig
  distributed: DistributedConfig
  data: DataConfig
  video: VideoConfig | None = None
  stage: str | None = None  # the Wan configs' stage name

  @classmethod
  def from_config_dict(cls, cfg) -> RunConfig:
    """The one place a ConfigDict becomes a RunConfig; raises ConfigError naming the field."""
    if isinstance(cfg, RunConfig):
      return cfg
    keys = set(cfg.keys())
    missing = [s for s in REQUIRED_SECTIONS if s not in keys]
    pipeline = pipeline_name(cfg)
    if pipeline == "wan" and "video" not in keys:
      missing.append("video")
    if missing:
      raise ConfigError(
        f"config is missing section(s) {missing}; start from configs/base.py "
        "(load_config_module('base').get_config(...)) or a named config"
      )
    unknown = sorted(keys - set(TOP_LEVEL_KEYS))
    if unknown:
      raise ConfigError(f"config has unknown key(s) {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
    _one_of("pipeline", pipeline, PIPELINES)
    if pipeline == "tiny" and "video" in keys:
      raise ConfigError(
        "config.video is the Wan pipeline's section; set config.pipeline='wan' or drop it"
      )
    _int("seed", cfg.seed, minimum=0)
    sections = {name: kind.of(cfg[name]) for name, kind in SECTIONS.items() if name in keys}
    model, section = _model(cfg.model, pipeline)
    run = cls(
      pipeline=pipeline,
      seed=cfg.seed,
      model=model,
      model_section=section,
      stage=cfg.get("stage"),
      **sections,
    )
    run._check()
    return run

  def _check(self) -> None:
    """The checks across sections: data against the model, the latent grid against the
    patch and the STGA windows."""
    if self.pipeline == "tiny":
      m, d = self.model_section, self.data
      if m.caption_len != d.caption_len:
        raise ConfigError(
          f"config.model.caption_len ({m.caption_len}) must equal "
          f"config.data.caption_len ({d.caption_len})"
        )
      f = m.latent_factor
      if d.height % f or d.width % f:
        raise ConfigError(
          f"config.data.height x width ({d.height}x{d.width}) must be divisible by "
          f"config.model.latent_factor ({f})"
        )
    else:
      s = self.sample
      for name in ("negative_prompt", "text_encoder_dtype"):
        if getattr(s, name) is None:
          raise ConfigError(f"config.sample.{name} must be set for the Wan pipeline, got None")
    grid, patch = self.latent_grid, self.model.patch
    if len(patch) != 3 or any(g % p for g, p in zip(grid, patch, strict=True)):
      raise ConfigError(
        f"the latent grid (frames, height, width) = {grid} must be divisible by "
        f"config.model.patch {patch}"
      )
    tokens = self.token_grid
    windows = None if self.model.attention is None else self.model.attention.stga_windows
    if windows is not None and (windows[0] > tokens[1] or windows[1] > tokens[2]):
      raise ConfigError(
        f"config.model.attention.stga_windows {windows} cuts each latent frame of "
        f"{tokens[1]}x{tokens[2]} tokens into more windows than it has rows or columns"
      )

  # -- what the sections say together ---------------------------------------------------------

  @property
  def latent_grid(self) -> tuple[int, int, int]:
    """(frames, height, width) of one sample's latents: through the Wan VAE (pipeline "wan")
    or the tiny pipeline's space-to-depth fold."""
    if self.video is not None:
      return self.video.latent_grid
    d, f = self.data, self.model_section.latent_factor
    return d.shots * d.frames_per_shot, d.height // f, d.width // f

  @property
  def token_grid(self) -> tuple[int, int, int]:
    """The latent grid after the patch embedding."""
    return tuple(g // p for g, p in zip(self.latent_grid, self.model.patch, strict=True))

  @property
  def tokens(self) -> int:
    """Video tokens per sample."""
    return math.prod(self.token_grid)

  @property
  def shots(self) -> int:
    """Shots per training clip: video.shots (Wan) or data.shots."""
    return self.video.shots if self.video is not None else self.data.shots

  @property
  def caption_len(self) -> int:
    """Caption tokens per shot: umT5's (video.caption_len) or the byte encoder's."""
    return self.video.caption_len if self.video is not None else self.data.caption_len

  @property
  def attention(self) -> AttentionConfig:
    """The configured attention block (the dense block's settings when the model is dense)."""
    return self.model.attention or AttentionConfig.of(self.model_section.attention)

  def model_dict(self) -> dict:
    """The model section as a plain dict (what checkpoints record and compare)."""
    return ConfigDict(self.model_section).to_dict()

  def replace(self, **changes) -> RunConfig:
    run = dataclasses.replace(self, **changes)
    run._check()
    return run

  def validate_sharding(self, device_count: int) -> dict[str, int]:
    """Checks the mesh and rules against the model and batch before anything compiles;
    returns the resolved mesh shape. Ulysses attention gives each device whole sequences for
    num_heads / (context x tensor) heads, so that division must be exact."""
    s, m = self.sharding, self.model
    mesh = s.resolve(device_count)
    size = lambda logical: axes_size(mesh, s.rules.mesh_axes(logical))
    seq, heads = size(axes.ACTIVATION_LENGTH), size(axes.ACTIVATION_HEADS)
    batch = size(axes.ACTIVATION_BATCH)
    shares = mesh[SHARE_AXIS] if SHARE_AXIS in s.rules.mesh_axes(axes.ACTIVATION_LENGTH) else 1
    ulysses = seq // shares
    if m.num_heads % (ulysses * heads):
      divisors = [d for d in range(1, m.num_heads + 1) if m.num_heads % (d * heads) == 0]
      raise ConfigError(
        f"config.model.num_heads ({m.num_heads}) must be divisible by the context axes x head "
        f"axes of the mesh ({ulysses} x {heads} = {ulysses * heads}): Ulysses sequence "
        f"parallelism splits the heads over both inside attention; context can be one of "
        f"{divisors}, and sharding.mesh.share splits the sequence further; mesh {mesh}"
      )
    if shares > 1:
      a = self.attention
      sparse = a.num_groups is not None or a.stga_windows is not None or a.frame_attention
      if not sparse or a.window is not None or m.dense_layers:
        raise ConfigError(
          f"config.sharding.mesh.share = {shares} splits attention by MoGA's groups, STGA's "
          "windows and frames; it needs every block sparse, without the 3D window branch "
          f"(model.dense_layers = {m.dense_layers}, model.attention.window = {a.window}); "
          "set sharding.mesh.share=1"
        )
    if self.train.batch_size % batch:
      raise ConfigError(
        f"config.train.batch_size ({self.train.batch_size}) must be divisible by the "
        f"batch axes of the mesh ({batch} devices); mesh {mesh}"
      )
    if self.tokens % seq:
      raise ConfigError(
        f"the {self.tokens} video tokens per sample must be divisible by the sequence "
        f"axes of the mesh (context x share = {seq}); mesh {mesh}"
      )
    return mesh


def _model(m, pipeline: str) -> tuple[DiTConfig, FrozenConfigDict]:
  """The model section as DiTConfig (its checks are the model's, moga_jax.model.config) and
  frozen as given; the keys and dtypes a config may give, and the tiny pipeline's own fields."""
  unknown = sorted(set(m.keys()) - set(MODEL_KEYS))
  if unknown:
    raise ConfigError(f"config.model has unknown key(s) {unknown}; known: {sorted(MODEL_KEYS)}")
  needed = ["dim", "ffn_dim", "num_layers", "num_heads", "text_dim", "patch", "attention"]
  needed += list(TINY_MODEL_KEYS) if pipeline == "tiny" else ["in_channels"]
  needed += ["dense_layers", "scan_layers", "remat"]
  missing = [k for k in needed if k not in m]
  if missing:
    raise ConfigError(f"config.model is missing {missing}; start from a named config")
  for name in ("dim", "ffn_dim", "num_layers", "num_heads", "text_dim"):
    _int(f"model.{name}", m[name])
  if pipeline == "tiny":
    for name in TINY_MODEL_KEYS:
      _int(f"model.{name}", m[name])
  for name in ("dtype", "param_dtype"):
    if name in m:
      _one_of(f"model.{name}", m[name], DTYPES)
  try:
    AttentionConfig.of(m["attention"])
  except (TypeError, ValueError) as err:
    raise _attention_error(err) from None
  try:
    model = DiTConfig.from_model_section(m)
  except (TypeError, ValueError) as err:
    raise _prefixed(err, "model", {f.name for f in dataclasses.fields(DiTConfig)}) from None
  return model, FrozenConfigDict(m)


def pipeline_name(cfg) -> str:
  """config.pipeline, checked (a RunConfig's is). A config without the field (one built by hand)
  is "tiny", unless it has a Wan `video` section: that one must say which it is."""
  if isinstance(cfg, RunConfig):
    return cfg.pipeline
  name = cfg.get("pipeline")
  if name is None:
    if "video" in cfg:
      raise ConfigError(
        "the config has a `video` section but no `pipeline` field: set config.pipeline = 'wan' "
        "(a Wan DiT, as configs/wan1_3b_moga.py) or 'tiny'"
      )
    return "tiny"
  _one_of("pipeline", name, PIPELINES)
  return name


def as_run_config(cfg) -> RunConfig:
  """cfg as a RunConfig: itself, or a ConfigDict through `RunConfig.from_config_dict` (the
  boundary of the entry points still called with a ConfigDict)."""
  return cfg if isinstance(cfg, RunConfig) else RunConfig.from_config_dict(cfg)


def as_section(cfg, kind: type[_Section]):
  """The `kind` section (TrainConfig, DataConfig, ...) of cfg: cfg itself when it is one, that
  section of a RunConfig or of a whole ConfigDict (typed and checked whole), or a ConfigDict
  section (the boundary of the entry points still called with one)."""
  if isinstance(cfg, kind):
    return cfg
  if isinstance(cfg, RunConfig):
    return getattr(cfg, kind.SECTION)
  if "model" in cfg and kind.SECTION in cfg:  # a whole ConfigDict
    return getattr(as_run_config(cfg), kind.SECTION)
  return kind.of(cfg)
