"""The DiT's diffusers-layout export (moga_jax.wan.dit_weights.dit_to_diffusers, the safetensors
writer) read back by the converter's loader: exact, routers included, scanned or not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from moga_jax.model.text_to_video import dit_from_config
from moga_jax.train.config_files import load_config_module
from moga_jax.wan.dit_weights import (
  diffusers_config_for,
  dit_kwargs_from_diffusers,
  dit_to_diffusers,
  load_wan_dit,
)
from moga_jax.wan.weights import read_safetensors, write_safetensors

wan1_3b_moga = load_config_module("wan1_3b_moga")


def _model(scan: bool, seed: int):
  cfg = wan1_3b_moga.get_config().model
  cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads = 32, 48, 3, 2
  cfg.text_dim, cfg.freq_dim, cfg.in_channels = 16, 32, 4
  cfg.attention.num_groups = 3
  cfg.scan_layers = scan
  return dit_from_config(cfg, rngs=nnx.Rngs(seed))


def _params(dit) -> dict[str, np.ndarray]:
  flat = {
    ".".join(map(str, p)): np.asarray(v[...])
    for p, v in nnx.to_flat_state(nnx.state(dit, nnx.Param))
  }
  if dit.scan_layers:  # compare per block
    flat = {
      **{k: x for k, x in flat.items() if not k.startswith("blocks.")},
      **{
        f"blocks.{i}.{k[len('blocks.') :]}": x[i]
        for k, x in flat.items()
        if k.startswith("blocks.")
        for i in range(x.shape[0])
      },
    }
  return flat


@pytest.mark.parametrize("source_scan", [False, True])
def test_export_reads_back_exactly_into_either_layout(tmp_path, source_scan):
  source = _model(source_scan, seed=1)
  tensors = dit_to_diffusers(source)
  assert "blocks.2.attn1.router.proj.weight" in tensors  # MoGA's router, under our name
  assert tensors["blocks.0.attn1.to_q.weight"].shape == (32, 32)
  path = write_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", tensors)
  read = read_safetensors(path)
  assert sorted(read) == sorted(tensors)
  for name, x in tensors.items():
    np.testing.assert_array_equal(read[name], x, err_msg=name)
  want = _params(source)
  for scan in (False, True):
    target = _model(scan, seed=2)
    report = load_wan_dit(path, target)
    assert not report.initialised  # the routers came from the file
    got = _params(target)
    assert sorted(got) == sorted(want)
    for name, x in want.items():
      np.testing.assert_array_equal(got[name], x, err_msg=name)


def test_writer_refuses_a_dtype_safetensors_cannot_name(tmp_path):
  with pytest.raises(ValueError, match="tensor 'x': dtype complex64 has no safetensors name"):
    write_safetensors(tmp_path / "bad.safetensors", {"x": np.zeros(2, np.complex64)})


def test_exported_config_reads_back_as_the_same_widths():
  cfg = wan1_3b_moga.get_config().model
  cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.num_heads = 48, 80, 3, 3
  cfg.text_dim, cfg.freq_dim, cfg.in_channels = 24, 32, 4
  written = json.loads(json.dumps(diffusers_config_for(cfg)))  # as config.json holds it
  kwargs = dit_kwargs_from_diffusers(written)
  got = {k: kwargs[k] for k in ("dim", "num_heads", "ffn_dim", "num_layers", "text_dim")}
  assert got == {"dim": 48, "num_heads": 3, "ffn_dim": 80, "num_layers": 3, "text_dim": 24}
  assert tuple(kwargs["patch"]) == tuple(cfg.patch)
  assert (kwargs["in_channels"], kwargs["out_channels"], kwargs["freq_dim"]) == (4, 4, 32)
