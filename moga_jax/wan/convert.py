"""Convert a diffusers Wan 2.1 text-to-video checkpoint into moga-jax's orbax layout.

  python -m moga_jax.wan.convert --src Wan2.1-T2V-1.3B-Diffusers --out weights/wan1_3b_moga \
      [--config configs/wan1_3b_moga.py] [--components transformer,vae,text_encoder,tokenizer]

SRC is a diffusers pipeline folder (transformer/, vae/, text_encoder/, tokenizer/; the last three
are converted when present) or a transformer folder on its own, or a Hugging Face Hub id of one
(`--src Wan-AI/Wan2.1-T2V-1.3B-Diffusers`: only the files read for --components are fetched, into
the cache HF_HOME names; HF_HUB_OFFLINE=1 uses the cache alone; moga_jax.wan.hub). Only safetensors
are read; a pickle-based file (.bin, .pt, .ckpt) is refused. Any missing, unexpected or mis-shaped
tensor stops the conversion and is listed by name. The transformer's widths (dim, heads, layers,
FFN, text width, patch) come from its own config.json, so Wan2.1-T2V 1.3B, 14B or a custom size
converts with one config; only MoGA's settings (and the seed) come from --config, and `train.py
--init` and `sample.py --weights` build the DiT with the recorded widths. MoGA's routers are not in
Wan and are initialised from the config's seed, which the report says.
Output layout: `moga_jax.wan.converted_folder`, which reads it back.

This module is the library (`convert`, one `convert_*` per component) and the command; its flags
are defined only when the command runs, so importing it claims no flag names.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx

from moga_jax.errors import InputError, MissingInputError
from moga_jax.model.text_to_video import dit_from_config
from moga_jax.wan.converted_folder import TOKENIZER_FILES, WIDTHS, report_json, save_component
from moga_jax.wan.dit_weights import dit_kwargs_from_diffusers, load_wan_dit
from moga_jax.wan.hub import resolve_source
from moga_jax.wan.tokenizer import load_tokenizer
from moga_jax.wan.umt5_weights import load_umt5
from moga_jax.wan.vae_weights import load_wan_vae
from moga_jax.wan.weights import read_safetensors

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")


def component_folders(src: str | Path) -> dict[str, Path]:
  """{component: folder} found in a diffusers pipeline folder or a bare transformer folder."""
  src = Path(src)
  if not src.is_dir():
    raise MissingInputError(
      f"--src {src} is not a folder (give a diffusers Wan folder or a Hub id, owner/name)"
    )
  if (src / "config.json").is_file() and not (src / "transformer").is_dir():
    return {"transformer": src}
  found = {name: src / name for name in COMPONENTS if (src / name).is_dir()}
  if not found:
    raise MissingInputError(
      f"--src {src} has none of {', '.join(COMPONENTS)} and no "
      "config.json: is it a diffusers Wan 2.1 folder?"
    )
  return found


def with_source_widths(
  cfg: ml_collections.ConfigDict, source: dict, where: Path
) -> ml_collections.ConfigDict:
  """A copy of cfg whose model widths are the source transformer's config.json (Wan 2.1 T2V
  1.3B, 14B or any custom size); MoGA's settings and everything else stay the config's. Each
  width that differs from the config is logged."""
  theirs = dit_kwargs_from_diffusers(source)
  if theirs["out_channels"] != theirs["in_channels"]:
    raise InputError(
      f"{where}: out_channels {theirs['out_channels']} != in_channels "
      f"{theirs['in_channels']}: not a text-to-video transformer"
    )
  cfg = copy.deepcopy(cfg)
  for key in WIDTHS:  # VideoDiT's keyword arguments and config.model's keys alike
    value = theirs[key]
    ours = cfg.model.get(key)
    if (tuple(ours) if key == "patch" else ours) != value:
      logging.warning("model.%s: %r from %s (the config says %r)", key, value, where, ours)
    cfg.model[key] = value
  return cfg


def _float_dtype(tensors: dict[str, np.ndarray]):
  """The floating dtype most of the source's parameters are stored in (kept as is)."""
  counts = Counter(x.dtype for x in tensors.values() if jnp.issubdtype(x.dtype, jnp.floating))
  return jnp.dtype(counts.most_common(1)[0][0]) if counts else jnp.dtype(jnp.float32)


def convert_transformer(folder: Path, out: Path, cfg) -> str:
  source = json.loads((folder / "config.json").read_text())
  cfg = with_source_widths(cfg, source, folder)
  dit = dit_from_config(cfg.model, rngs=nnx.Rngs(cfg.seed))
  report = load_wan_dit(folder, dit)  # raises, naming tensors, unless complete
  save_component(
    out / "transformer",
    dit,
    meta={
      "component": "transformer",
      "source": str(folder),
      "diffusers_config": source,
      "model_config": cfg.model.to_dict(),
      "seed": cfg.seed,
      "report": report_json(report),
    },
  )
  return report.describe(f"transformer {folder}")


def convert_vae(folder: Path, out: Path, cfg) -> str:
  vae, report = load_wan_vae(folder)
  stride = (vae.config.temporal_factor, vae.config.spatial_factor, vae.config.spatial_factor)
  if cfg.get("pipeline") == "wan" and tuple(cfg.video.vae_stride) != stride:
    raise InputError(
      f"{folder}: the VAE compresses (t, h, w) by {stride}, the config's "
      f"video.vae_stride says {tuple(cfg.video.vae_stride)}"
    )
  if vae.config.z_dim != cfg.model.in_channels:
    raise InputError(
      f"{folder}: the VAE has {vae.config.z_dim} latent channels, the config's "
      f"model.in_channels is {cfg.model.in_channels}"
    )
  target = save_component(
    out / "vae",
    vae,
    meta={"component": "vae", "source": str(folder), "report": report_json(report)},
  )
  shutil.copyfile(folder / "config.json", target / "config.json")
  return report.describe(f"vae {folder}")


def convert_text_encoder(folder: Path, out: Path, cfg) -> str:
  dtype = _float_dtype(read_safetensors(folder))
  encoder, report = load_umt5(folder, param_dtype=dtype, dtype=dtype)
  if encoder.config.d_model != cfg.model.text_dim:
    raise InputError(
      f"{folder}: the text encoder's width is {encoder.config.d_model}, the "
      f"config's model.text_dim is {cfg.model.text_dim}"
    )
  target = save_component(
    out / "text_encoder",
    encoder,
    meta={
      "component": "text_encoder",
      "source": str(folder),
      "dtype": str(dtype),
      "report": report_json(report),
    },
  )
  shutil.copyfile(folder / "config.json", target / "config.json")
  return report.describe(f"text_encoder {folder} ({dtype})")


def convert_tokenizer(folder: Path, out: Path, cfg) -> str:
  del cfg
  load_tokenizer(folder)  # refuses what we could not read later
  target = out / "tokenizer"
  target.mkdir(parents=True, exist_ok=True)
  copied = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
  for name in copied:
    shutil.copyfile(folder / name, target / name)
  return f"tokenizer {folder}: copied {', '.join(copied)}"


CONVERTERS = {
  "transformer": convert_transformer,
  "vae": convert_vae,
  "text_encoder": convert_text_encoder,
  "tokenizer": convert_tokenizer,
}


def convert(src: str | Path, out: str | Path, cfg, components=COMPONENTS) -> list[str]:
  """Converts the requested components present in src; returns one report per component."""
  unknown = sorted(set(components) - set(COMPONENTS))
  if unknown:
    raise InputError(f"--components: unknown {unknown}; choose from {', '.join(COMPONENTS)}")
  src = resolve_source(src, components)  # a Hub id: its snapshot in the HF cache
  found = component_folders(src)
  todo = [name for name in COMPONENTS if name in components and name in found]
  if not todo:
    raise MissingInputError(f"none of {', '.join(components)} in {src}")
  out = Path(out)
  if "transformer" in found:  # the other components are checked against these widths
    config = json.loads((found["transformer"] / "config.json").read_text())
    cfg = with_source_widths(cfg, config, found["transformer"])
  reports = []
  for name in todo:
    start = time.perf_counter()
    print(f"converting {name} ...", flush=True)
    reports.append(CONVERTERS[name](found[name], out, cfg))
    print(f"{reports[-1]}\n  ({time.perf_counter() - start:.1f} s)", flush=True)
  return reports


def _define_flags() -> None:
  """The command's flags, defined only when it runs (see the module docstring)."""
  from ml_collections import config_flags

  from moga_jax.train.config_files import config_path

  config_flags.DEFINE_config_file(
    "config",
    config_path("wan1_3b_moga"),
    "Config whose MoGA settings the DiT is built with (its widths come from SRC).",
  )
  flags.DEFINE_string(
    "src", None, "diffusers Wan folder (or its transformer/), or a Hub id.", required=True
  )
  flags.DEFINE_string("out", None, "Output folder.", required=True)
  flags.DEFINE_list(
    "components", list(COMPONENTS), "Which components to convert (those present in SRC)."
  )


def main(argv):
  del argv
  f = flags.FLAGS
  convert(f.src, f.out, f.config, f.components)
  print(f"converted to {Path(f.out).absolute()}")


if __name__ == "__main__":
  from moga_jax.train.run_guard import cli_main

  _define_flags()
  app.run(cli_main(main, "convert_wan"))
