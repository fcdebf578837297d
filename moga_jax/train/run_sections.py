"""The sections of a typed run config: one frozen, hashable dataclass per section of a config
file (`TrainConfig`, `DiffusionConfig`, `SampleConfig`, `DataConfig`, `VideoConfig`,
`ShardingConfig`, `DistributedConfig`), each checking its own fields on construction and
refusing unknown keys with the known ones (`Section.of(config_section)`). How they fit together
(and with the model) is checked by `moga_jax.train.run_config.RunConfig`, which holds them.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

from moga_jax.diffusion.flow import SOLVERS
from moga_jax.errors import ConfigError
from moga_jax.model.config import DiTConfig
from moga_jax.parallel.sharding import MESH_AXES, ShardingRules, resolve_mesh_shape

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
