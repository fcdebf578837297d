"""Export a Wan DiT fine-tuned here as a diffusers-layout transformer folder.

  python -m moga_jax.wan.export --config configs/wan1_3b_moga.py --weights weights/wan1_3b_moga \
      --workdir runs/wan1_3b --out exported/wan1_3b_moga_ft

writes OUT/config.json (diffusers WanTransformer3DModel keys: the run's widths) and
OUT/diffusion_pytorch_model.safetensors: Wan's tensors under diffusers' names plus MoGA's
routers as `blocks.<i>.attn1.router.proj.{weight,bias}` (names Wan does not have: diffusers
itself would ignore them), and OUT/moga_jax_export.json (the run, its step, MoGA's settings).
The EMA of the weights is exported when the run kept one (--noema: the raw weights).

`python -m moga_jax.wan.convert --src OUT --out DIR --config CONFIG` reads it back, routers
included (then loaded, not initialised): that is how stage 2 of configs/wan1_3b_moga.py starts
from stage 1 (copy the converted folder's vae/, text_encoder/ and tokenizer/ beside it).
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from moga_jax.errors import ConfigError
from moga_jax.train.checkpoint import Checkpointer
from moga_jax.train.config_files import config_path
from moga_jax.train.run_guard import cli_main
from moga_jax.train.state import load_trained
from moga_jax.wan.converted_folder import with_converted_widths
from moga_jax.wan.dit_weights import diffusers_config_for, dit_to_diffusers
from moga_jax.wan.weights import write_safetensors

_CONFIG = config_flags.DEFINE_config_file(
  "config", config_path("wan1_3b_moga"), "The run's config (a Wan config)."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The fine-tuned run.", required=True)
_WEIGHTS = flags.DEFINE_string(
  "weights", None, "The converted folder the run started from (its recorded widths).", required=True
)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_EMA = flags.DEFINE_boolean("ema", True, "Export the EMA of the weights when the run kept one.")


def export_run(
  cfg, workdir: str | Path, weights: str | Path, out: str | Path, *, use_ema: bool = True
) -> Path:
  if cfg.get("pipeline") != "wan":
    raise ConfigError(
      f"config.pipeline is {cfg.get('pipeline')!r}: export writes a Wan DiT, so it needs a "
      "config with pipeline 'wan' (e.g. configs/wan1_3b_moga.py)"
    )
  cfg = with_converted_widths(cfg, weights)
  dit = load_trained(cfg, workdir, use_ema=use_ema)
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  write_safetensors(
    out / "diffusion_pytorch_model.safetensors", dit_to_diffusers(dit), metadata={"format": "pt"}
  )
  (out / "config.json").write_text(json.dumps(diffusers_config_for(cfg.model), indent=2) + "\n")
  checkpoints = Checkpointer(Path(workdir) / "checkpoints")
  step = checkpoints.latest_step()
  checkpoints.close()
  (out / "moga_jax_export.json").write_text(
    json.dumps(
      {
        "run": str(Path(workdir).absolute()),
        "step": step,
        "ema": use_ema,
        "attention": cfg.model.attention.to_dict(),
      },
      indent=1,
      default=list,
    )
    + "\n"
  )
  return out


def main(argv):
  del argv
  out = export_run(_CONFIG.value, _WORKDIR.value, _WEIGHTS.value, _OUT.value, use_ema=_EMA.value)
  print(
    f"exported to {out.absolute()}: convert back with `python -m moga_jax.wan.convert --src "
    f"{out} --out DIR`"
  )


if __name__ == "__main__":
  app.run(cli_main(main, "export"))
