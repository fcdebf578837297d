"""Typed, frozen run configs: what training, data, sampling and the mesh are built from.

The sections themselves live in `moga_jax.train.run_sections` (re-exported here); this module
holds the whole run, `RunConfig`, and the checks across sections.

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

from ml_collections import ConfigDict, FrozenConfigDict

from moga_jax.errors import ConfigError
from moga_jax.model.config import AttentionConfig, DiTConfig
from moga_jax.parallel import axes
from moga_jax.parallel.sharding import SHARE_AXIS, axes_size
from moga_jax.train.run_sections import (  # the sections, re-exported: the typed API is one module
  ADAM_MU_DTYPES,
  DTYPES,
  MODEL_KEYS,
  PIPELINES,
  REQUIRED_SECTIONS,
  SCHEDULES,
  SECTIONS,
  TINY_MODEL_KEYS,
  TOP_LEVEL_KEYS,
  DataConfig,
  DiffusionConfig,
  DistributedConfig,
  SampleConfig,
  ShardingConfig,
  TrainConfig,
  VideoConfig,
  _int,
  _one_of,
  _Section,
)

__all__ = [
  "ADAM_MU_DTYPES",
  "DTYPES",
  "PIPELINES",
  "SCHEDULES",
  "DataConfig",
  "DiffusionConfig",
  "DistributedConfig",
  "RunConfig",
  "SampleConfig",
  "ShardingConfig",
  "TrainConfig",
  "VideoConfig",
  "as_run_config",
  "as_section",
  "pipeline_name",
]


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
