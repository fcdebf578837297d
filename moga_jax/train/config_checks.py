"""Config validation for callers that still hold a ConfigDict: each check lives in
`moga_jax.train.run_config` (the run's sections and how they fit together) or
`moga_jax.model.config` (the model's), and runs when `RunConfig.from_config_dict` types the
config; these are the old entry points onto it."""

from __future__ import annotations

from moga_jax.train.run_config import DTYPES, REQUIRED_SECTIONS, SCHEDULES, RunConfig, as_run_config

__all__ = [
  "DTYPES",
  "REQUIRED_SECTIONS",
  "SCHEDULES",
  "latent_grid",
  "validate_config",
  "validate_sharding",
]


def validate_config(cfg) -> RunConfig:
  """Checks every field train.py and sample.py rely on, raising moga_jax.errors.ConfigError
  (a ValueError) naming it; returns the typed config."""
  return as_run_config(cfg)


def latent_grid(cfg) -> tuple[int, int, int]:
  """(frames, height, width) of the latents a config's videos become, its fields checked."""
  return as_run_config(cfg).latent_grid


def validate_sharding(cfg, device_count: int) -> dict[str, int]:
  """The mesh and rules checked against the model and batch; the resolved mesh shape."""
  return as_run_config(cfg).validate_sharding(device_count)
