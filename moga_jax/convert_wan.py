"""Convert a diffusers Wan 2.1 text-to-video checkpoint into moga-jax's orbax layout.

  python -m moga_jax.convert_wan --src Wan2.1-T2V-1.3B-Diffusers --out weights/wan1_3b_moga \
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
Output layout: `moga_jax.wan.converted`.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from moga_jax.config_files import config_path
from moga_jax.run_guard import cli_main
from moga_jax.wan.convert import COMPONENTS, convert

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  config_path("wan1_3b_moga"),
  "Config whose MoGA settings the DiT is built with (its widths come from SRC).",
)
_SRC = flags.DEFINE_string(
  "src", None, "diffusers Wan folder (or its transformer/), or a Hub id.", required=True
)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_COMPONENTS = flags.DEFINE_list(
  "components", list(COMPONENTS), "Which components to convert (those present in SRC)."
)


def main(argv):
  del argv
  convert(_SRC.value, _OUT.value, _CONFIG.value, _COMPONENTS.value)
  print(f"converted to {Path(_OUT.value).absolute()}")


if __name__ == "__main__":
  app.run(cli_main(main, "convert_wan"))
