"""convert_wan --src OWNER/NAME: Hub ids resolve through huggingface_hub's cache, offline here.

The tests lay out a Hugging Face cache (HF_HOME/hub/models--OWNER--NAME/{refs,snapshots}) the
way `snapshot_download` leaves it and run with HF_HUB_OFFLINE=1: no network is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")  # the `wan` extra

from flax import nnx
from huggingface_hub.utils import filter_repo_objects

from moga_jax.model.text_to_video import dit_from_config
from moga_jax.train.config_files import load_config_module
from moga_jax.wan.dit_weights import diffusers_config_for, dit_to_diffusers
from moga_jax.wan.hub import hub_patterns, is_hub_id
from moga_jax.wan.weights import write_safetensors

ROOT = Path(__file__).parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_hub_ids_and_local_paths(tmp_path, monkeypatch):
  assert is_hub_id("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
  assert not is_hub_id("weights")  # no owner
  assert not is_hub_id("./Wan-AI/x") and not is_hub_id("/abs/path") and not is_hub_id("a/b/c")
  monkeypatch.chdir(tmp_path)
  (tmp_path / "Wan-AI" / "local").mkdir(parents=True)
  assert not is_hub_id("Wan-AI/local")  # an existing folder wins


def test_allow_patterns_fetch_only_what_the_converter_reads():
  """On the file list of Wan2.1-T2V-1.3B-Diffusers (abridged), as huggingface_hub filters it."""
  repo = [
    "model_index.json",
    "README.md",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model-00001-of-00005.safetensors",
    "text_encoder/model.safetensors.index.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/spiece.model",
    "scheduler/scheduler_config.json",
    "transformer/diffusion_pytorch_model.bin",
    "examples/i2v_input.JPG",
  ]
  keep = lambda components: set(filter_repo_objects(repo, allow_patterns=hub_patterns(components)))
  assert keep(["transformer"]) == {"model_index.json", *(f for f in repo[2:6])}
  everything = keep(["transformer", "vae", "text_encoder", "tokenizer"])
  assert everything == set(repo) - {
    "README.md",
    "tokenizer/spiece.model",
    "scheduler/scheduler_config.json",
    "transformer/diffusion_pytorch_model.bin",
    "examples/i2v_input.JPG",
  }
  # a transformer-only repo: its files sit at the top
  alone = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
  assert set(filter_repo_objects(alone, allow_patterns=hub_patterns(["transformer"]))) == set(
    alone[:2]
  )


def _tiny_wan_transformer(folder: Path) -> None:
  """A diffusers-layout Wan transformer (config.json + safetensors) with tiny widths and, like
  Wan's own files, no MoGA routers."""
  cfg = load_config_module("wan1_3b_moga").get_config().model
  cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads = 32, 48, 2, 2
  cfg.text_dim, cfg.freq_dim, cfg.in_channels = 16, 32, 4
  tensors = dit_to_diffusers(dit_from_config(cfg, rngs=nnx.Rngs(0)))
  folder.mkdir(parents=True)
  write_safetensors(
    folder / "diffusion_pytorch_model.safetensors",
    {k: v for k, v in tensors.items() if ".router." not in k},
  )
  (folder / "config.json").write_text(json.dumps(diffusers_config_for(cfg)))


def _convert(tmp_path: Path, src: str, hf_home: Path) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
  env |= {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
  return subprocess.run(
    [
      *(sys.executable, "-m", "moga_jax.wan.convert", "--src", src),
      *("--out", str(tmp_path / "out"), "--components", "transformer"),
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=300,
  )


@pytest.mark.subprocess
def test_convert_wan_from_a_cached_hub_id_offline(tmp_path):
  hf_home = tmp_path / "hf"
  repo = hf_home / "hub" / "models--acme--tiny-wan"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(COMMIT)
  snapshot = repo / "snapshots" / COMMIT
  _tiny_wan_transformer(snapshot / "transformer")
  (snapshot / "model_index.json").write_text('{"_class_name": "WanPipeline"}')

  done = _convert(tmp_path, "acme/tiny-wan", hf_home)
  assert done.returncode == 0, done.stderr[-3000:]
  meta = json.loads((tmp_path / "out" / "transformer" / "moga_jax.json").read_text())
  assert meta["source"] == str(snapshot / "transformer")
  initialised = meta["report"]["initialised"]  # MoGA's routers only: the rest came from the file
  assert initialised and all("router" in name for name in initialised), initialised

  missing = _convert(tmp_path, "acme/not-cached", hf_home)
  assert missing.returncode == 2, missing.stderr[-3000:]
  (line,) = missing.stderr.strip().splitlines()
  assert line.startswith("convert_wan: error: --src acme/not-cached: no such local folder, and ")
  assert str(hf_home / "hub") in line and "HF_HUB_OFFLINE is set" in line
  assert "`hf download acme/not-cached`" in line
