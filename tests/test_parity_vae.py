"""Wan 2.1 VAE against diffusers' AutoencoderKLWan, in float32.

The reference is tiny and random in every parameter (RMS norm gammas and all biases included, so
a wrong norm or a dropped bias fails), with the mid-block attention and both kinds of temporal
resampling. 9 frames make 3 latent frames, so the chunk cache is carried through two scan steps
in both directions.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import wan_reference  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from wan_reference import rel_err  # noqa: E402

from moga_jax.wan.vae import WanVAE, WanVAEConfig  # noqa: E402
from moga_jax.wan.vae_weights import load_wan_vae  # noqa: E402

# One worker builds the module fixtures (reference models) once (--dist loadgroup).
pytestmark = [pytest.mark.parity, pytest.mark.xdist_group("parity_vae")]

TINY = wan_reference.VAE
B, T, H, W = 2, 9, 24, 32  # H != W catches transposed spatial axes


def to_torch_layout(x: np.ndarray) -> torch.Tensor:
  """[B, T, H, W, C] -> [B, C, T, H, W]."""
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A random diffusers AutoencoderKLWan saved with save_pretrained: (model, folder)."""
  folder = tmp_path_factory.mktemp("wan_vae")
  model = wan_reference.save_vae(folder)
  return model, folder


@pytest.fixture(scope="module")
def ours(reference):
  """(encode, decode, encode_normalized, decode_normalized), each jitted, of the loaded VAE."""
  vae, report = load_wan_vae(reference[1])
  assert report.ok and report.loaded
  graph, state = nnx.split(vae)
  fns = []
  for method in ("encode", "decode", "encode_normalized", "decode_normalized"):
    fn = jax.jit(lambda s, x, m=method: getattr(nnx.merge(graph, s), m)(x))
    fns.append(lambda x, fn=fn: np.asarray(fn(state, jnp.asarray(x))))
  return fns


# Measured 3.5e-7 to 1.4e-6 (float32, 2026-11-25); a few times that, so a real divergence fails.
PARITY = 5e-6


def test_encode_matches_diffusers(reference, ours):
  model, _ = reference
  encode, _, encode_normalized, _ = ours
  video = np.random.default_rng(1).uniform(-1, 1, (B, T, H, W, 3)).astype(np.float32)
  with torch.no_grad():
    mean = model.encode(to_torch_layout(video)).latent_dist.mean
    # As diffusers' Wan pipelines scale latents for the transformer.
    stats = lambda v: torch.tensor(v).view(1, -1, 1, 1, 1)
    normalized = (mean - stats(TINY["latents_mean"])) * (1.0 / stats(TINY["latents_std"]))
  want = np.moveaxis(mean.numpy(), 1, -1)
  got = encode(video)
  assert got.shape == (B, 1 + (T - 1) // 4, H // 8, W // 8, TINY["z_dim"])
  err = rel_err(got, want)
  assert err < PARITY, err
  err = rel_err(encode_normalized(video), np.moveaxis(normalized.numpy(), 1, -1))
  assert err < PARITY, err


def test_decode_matches_diffusers(reference, ours):
  model, _ = reference
  _, decode, _, decode_normalized = ours
  latents = np.random.default_rng(2).normal(size=(B, 3, H // 8, W // 8, TINY["z_dim"]))
  latents = latents.astype(np.float32)
  with torch.no_grad():
    want = model.decode(to_torch_layout(latents)).sample
    stats = lambda v: torch.tensor(v).view(1, -1, 1, 1, 1)
    scaled = to_torch_layout(latents) / (1.0 / stats(TINY["latents_std"])) + stats(
      TINY["latents_mean"]
    )
    want_normalized = model.decode(scaled).sample
  want = np.moveaxis(want.numpy(), 1, -1)
  # Most values must lie inside diffusers' clamp to [-1, 1], or the comparison would be hollow.
  assert np.mean(np.abs(want) >= 1.0) < 0.3
  got = decode(latents)
  assert got.shape == (B, T, H, W, 3)
  err = rel_err(got, want)
  assert err < PARITY, err
  err = rel_err(decode_normalized(latents), np.moveaxis(want_normalized.numpy(), 1, -1))
  assert err < PARITY, err


def test_loading_names_missing_unexpected_and_misshaped(reference, tmp_path):
  _, folder = reference
  tensors = load_file(folder / "diffusion_pytorch_model.safetensors")
  tensors["decoder.conv_in.weight"] = np.zeros((17, 4, 3, 3, 3), np.float32)  # 16 out channels
  del tensors["encoder.mid_block.attentions.0.proj.bias"]
  tensors["encoder.mid_block.attentions.1.proj.bias"] = np.zeros(16, np.float32)
  save_file(tensors, tmp_path / "diffusion_pytorch_model.safetensors")
  shutil.copy(folder / "config.json", tmp_path / "config.json")
  with pytest.raises(ValueError) as info:
    load_wan_vae(tmp_path)
  message = str(info.value)
  assert "missing" in message and "encoder.mid_block.attention.proj.bias" in message
  assert "unexpected" in message and "encoder.mid_block.attentions.1.proj.bias" in message
  assert "mis-shaped" in message and "decoder.conv_in.weight" in message


def test_config_refuses_wan22_and_unknown_fields(reference, tmp_path):
  raw = json.loads((reference[1] / "config.json").read_text())
  assert WanVAEConfig.from_json(reference[1]).dim_mult == tuple(TINY["dim_mult"])
  for change, needle in (
    ({"is_residual": True, "patch_size": 2, "in_channels": 12}, "Wan 2.2"),
    ({"clip_output": True}, "clip_output"),
    ({"dropout": 0.1}, "dropout"),
  ):
    (tmp_path / "config.json").write_text(json.dumps(raw | change))
    with pytest.raises(ValueError, match=needle):
      WanVAEConfig.from_json(tmp_path)


def test_encode_refuses_partial_chunks():
  vae = nnx.eval_shape(lambda: WanVAE(WanVAEConfig(**TINY), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="1 \\+ 4k frames"):
    vae.encode(jnp.ones((1, 6, 8, 8, 3)))


def _compiled_sizes(fn, state, shape) -> tuple[int, int]:
  """(temp bytes, argument + output bytes) XLA plans for fn(state, x) with x of `shape`."""
  compiled = fn.lower(state, jax.ShapeDtypeStruct(shape, jnp.float32)).compile()
  stats = compiled.memory_analysis()
  if stats is None:
    pytest.skip("this backend reports no memory analysis")
  return stats.temp_size_in_bytes, stats.argument_size_in_bytes + stats.output_size_in_bytes


@pytest.mark.parametrize("method", ["encode", "decode"])
def test_memory_does_not_grow_with_frames(method):
  """XLA's planned scratch memory must not grow with the video length beyond its in/output.

  Compiles for 9 and for 17 frames (3 and 5 latent frames) and compares
  `memory_analysis().temp_size_in_bytes`, the buffers XLA allocates beyond arguments and
  outputs. With the chunk loop under lax.scan only a per-chunk working set and the carried
  cache are live, so temp may grow by at most what the longer input and output themselves add
  (XLA may stage a copy of either, e.g. the chunked view of the video or the scan's stacked
  outputs) plus 5% slack. Unrolling the loop in Python instead grows temp here by ~1 MB for
  encode and ~0.7 MB for decode against ~0.1 MB of extra in/output, so this check fails it.
  """
  config = WanVAEConfig(**TINY)
  graph, state = nnx.split(nnx.eval_shape(lambda: WanVAE(config, rngs=nnx.Rngs(0))))
  fn = jax.jit(lambda s, x: getattr(nnx.merge(graph, s), method)(x))
  shape = {
    "encode": lambda t: (1, t, 32, 32, 3),
    "decode": lambda t: (1, 1 + (t - 1) // 4, 4, 4, config.z_dim),
  }[method]
  temp9, io9 = _compiled_sizes(fn, state, shape(9))
  temp17, io17 = _compiled_sizes(fn, state, shape(17))
  assert temp17 - temp9 <= (io17 - io9) + 0.05 * temp9, (temp9, temp17, io9, io17)
