"""A converted Wan folder: one sub-folder per component, each orbax params + JSON.

  DIR/transformer/   params/ (orbax), moga_jax.json (model config, parameter table, report)
  DIR/vae/           params/, config.json (diffusers AutoencoderKLWan), moga_jax.json
  DIR/text_encoder/  params/, config.json (transformers UMT5), moga_jax.json
  DIR/tokenizer/     tokenizer.json (+ tokenizer_config.json), copied as is

`moga_jax.json` is written last, so a component without it is an interrupted conversion and
is refused. It lists every parameter's path, shape and dtype: loading into a module whose
parameters differ fails with the differences by name before orbax reads a byte.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from moga_jax.errors import ConfigError, InputError, MissingInputError
from moga_jax.model.dit import VideoDiT
from moga_jax.model.text_to_video import dit_from_config
from moga_jax.parallel.sharding import ShardingRules
from moga_jax.train.checkpoint import check_config
from moga_jax.wan.tokenizer import PromptTokenizer, load_tokenizer
from moga_jax.wan.umt5 import UMT5Config, UMT5Encoder
from moga_jax.wan.vae import WanVAE, WanVAEConfig
from moga_jax.wan.weights import WeightReport

META = "moga_jax.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _param_table(module: nnx.Module) -> dict[str, list]:
  """{dotted path: [shape, dtype]} of every nnx.Param (works on abstract modules too)."""
  flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
  return {
    ".".join(map(str, path)): [list(var.shape), str(jnp.dtype(var.dtype))] for path, var in flat
  }


def save_component(folder: str | Path, module: nnx.Module, *, meta: dict[str, Any]) -> Path:
  """Writes module's parameters to folder/params, then folder/moga_jax.json."""
  folder = Path(folder).absolute()
  folder.mkdir(parents=True, exist_ok=True)
  (folder / META).unlink(missing_ok=True)  # invalid until the params are complete
  if (folder / "params").exists():
    shutil.rmtree(folder / "params")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(folder / "params", nnx.state(module, nnx.Param))
  meta = {**meta, "params": _param_table(module)}
  (folder / META).write_text(json.dumps(meta, indent=1))
  return folder


def read_meta(folder: str | Path) -> dict[str, Any]:
  folder = Path(folder)
  if not (folder / META).is_file():
    what = (
      "an interrupted conversion (params without metadata)"
      if (folder / "params").exists()
      else "not a converted component"
    )
    raise MissingInputError(
      f"{folder} is {what}: run `python -m moga_jax.wan.convert --src "
      "<diffusers folder> --out <dir>` (again)"
    )
  return json.loads((folder / META).read_text())


def restore_component(folder: str | Path, module: nnx.Module) -> dict[str, Any]:
  """Fills module's nnx.Params (concrete or from nnx.eval_shape, sharded or not) in place from
  folder/params, cast to the module's dtypes; returns the metadata."""
  folder = Path(folder).absolute()
  meta = read_meta(folder)
  saved, want = meta["params"], _param_table(module)
  problems = [
    f"missing from the checkpoint: {k} {want[k][0]}" for k in sorted(set(want) - set(saved))
  ]
  problems += [
    f"in the checkpoint but not the module: {k} {saved[k][0]}"
    for k in sorted(set(saved) - set(want))
  ]
  problems += [
    f"{k}: checkpoint shape {saved[k][0]}, module {want[k][0]}"
    for k in sorted(set(saved) & set(want))
    if saved[k][0] != want[k][0]
  ]
  if problems:
    raise InputError(
      f"the parameters in {folder} do not fit this module:\n  "
      + "\n  ".join(problems[:40])
      + (f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else "")
    )
  state = nnx.state(module, nnx.Param)
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(folder / "params", target)
  nnx.update(
    module,
    jax.tree.map(lambda x, t: x.astype(t.dtype) if x.dtype != t.dtype else x, restored, target),
  )
  return meta


def report_json(report: WeightReport) -> dict[str, Any]:
  return {"loaded": len(report.loaded), "initialised": report.initialised}


# ---------------------------------------------------------------------------------------------
# Loading each component into a new module.


def _component(weights: str | Path, name: str) -> Path:
  folder = Path(weights) / name
  if not folder.is_dir():
    raise MissingInputError(
      f"{weights} has no {name}/: convert it with "
      f"`python -m moga_jax.wan.convert --src <diffusers folder> --out "
      f"{weights}`"
    )
  return folder


def restore_dit(
  weights: str | Path, dit: VideoDiT, model_cfg: ml_collections.ConfigDict
) -> dict[str, Any]:
  """Fills `dit` (concrete or abstract, sharded or not) with the converted transformer; when the
  parameters do not fit, the error also lists how `model_cfg` differs from the converted one."""
  folder = _component(weights, "transformer")
  meta = read_meta(folder)
  try:
    return restore_component(folder, dit)
  except ValueError as e:
    try:
      check_config(meta["model_config"], model_cfg.to_dict(), str(folder))
    except ValueError as differs:
      raise ConfigError(
        f"{e}\n{differs}\nConvert again with this config (convert_wan "
        "--config ...) or load with the one it was converted with."
      ) from None
    raise


# config.model keys a converted transformer fixes (its source's widths; moga_jax.wan.convert).
WIDTHS = (
  "in_channels",
  "dim",
  "ffn_dim",
  "num_layers",
  "num_heads",
  "text_dim",
  "patch",
  "freq_dim",
)


def with_converted_widths(
  cfg: ml_collections.ConfigDict, weights: str | Path
) -> ml_collections.ConfigDict:
  """A copy of cfg whose model widths are those the converted transformer in `weights` was
  built with (so one config serves Wan 1.3B, 14B or a custom size); the rest is cfg's."""
  saved = read_meta(_component(weights, "transformer"))["model_config"]
  cfg = copy.deepcopy(cfg)
  for key in WIDTHS:
    cfg.model[key] = tuple(saved[key]) if key == "patch" else saved[key]
  return cfg


def load_dit(
  weights: str | Path,
  model_cfg: ml_collections.ConfigDict,
  *,
  rules: ShardingRules | None = None,
  seed: int = 0,
) -> VideoDiT:
  """The converted transformer in a new VideoDiT built from `model_cfg` (its dims must match;
  attention settings that add parameters, such as MoGA's routers, too)."""
  dit = nnx.eval_shape(lambda: dit_from_config(model_cfg, rules=rules, rngs=nnx.Rngs(seed)))
  restore_dit(weights, dit, model_cfg)
  return dit


def _load_with_config(
  weights: str | Path, name: str, config_type, module_type, param_dtype: Any
) -> nnx.Module:
  """A converted component whose architecture is its copied config.json (VAE, umT5)."""
  folder = _component(weights, name)
  config = config_type.from_json(folder / "config.json")
  module = nnx.eval_shape(
    lambda: module_type(config, param_dtype=param_dtype, dtype=param_dtype, rngs=nnx.Rngs(0))
  )
  restore_component(folder, module)
  return module


def load_vae(weights: str | Path, *, param_dtype: Any = jnp.float32) -> WanVAE:
  return _load_with_config(weights, "vae", WanVAEConfig, WanVAE, param_dtype)


def load_text_encoder(weights: str | Path, *, param_dtype: Any = jnp.float32) -> UMT5Encoder:
  return _load_with_config(weights, "text_encoder", UMT5Config, UMT5Encoder, param_dtype)


def load_converted_tokenizer(weights: str | Path) -> PromptTokenizer:
  return load_tokenizer(_component(weights, "tokenizer"))
