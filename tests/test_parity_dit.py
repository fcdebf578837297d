"""VideoDiT loaded from a diffusers WanTransformer3DModel against that model, in float32.

The reference is tiny and random in every parameter (norm scales and biases, both modulation
tables, the zero-initialised head included), so a misplaced tensor or a differing op fails.
head_dim 16 splits RoPE unevenly (t 8, h 4, w 4), so a wrong axis order fails too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
import wan_reference  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from wan_reference import rel_err  # noqa: E402

from moga_jax.model.dit import VideoDiT  # noqa: E402
from moga_jax.wan.dit_weights import dit_kwargs_from_diffusers, load_wan_dit  # noqa: E402

# One worker builds the module fixtures (reference models) once (--dist loadgroup).
pytestmark = [pytest.mark.parity, pytest.mark.xdist_group("parity_dit")]

TINY = wan_reference.DIT
ONE_GROUP = {"num_groups": 1, "stga_windows": None, "frame_attention": False}
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A random WanTransformer3DModel saved with save_pretrained: (model, config dict, folder)."""
  folder = tmp_path_factory.mktemp("wan_dit")
  model = wan_reference.save_dit(folder)
  config = json.loads((folder / "config.json").read_text())
  return model, config, folder


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((2, 4, 3, 8, 8), np.float32)  # torch layout [B, C, F, H, W]
  t = np.array([0.137, 0.861], np.float32)
  context = rng.standard_normal((2, 7, 24), np.float32)
  return latents, t, context


def _reference_output(model, latents, t, context):
  # VideoDiT scales t by 1000 in float32; feed diffusers the very same timestep.
  timestep = np.float32(1000.0) * t
  with torch.no_grad():
    out = model(
      torch.from_numpy(latents),
      torch.from_numpy(timestep),
      torch.from_numpy(context),
      return_dict=False,
    )[0]
  return np.moveaxis(out.numpy(), 1, -1)


def _ours(dit, latents, t, context):
  b, _, f = latents.shape[:3]
  out, balance = dit(
    jnp.asarray(np.moveaxis(latents, 1, -1)),
    jnp.asarray(t),
    jnp.asarray(context)[:, None],
    jnp.ones((b, 1, context.shape[1]), bool),
    jnp.zeros((b, f), jnp.int32),
  )
  return np.asarray(out), float(balance)


ROUTERS = ["blocks.0.self_attn.router.proj.kernel", "blocks.1.self_attn.router.proj.kernel"]


@pytest.mark.parametrize(
  "kwargs, routers",
  [
    (dict(attention=None), []),
    (dict(attention=ONE_GROUP), ROUTERS),  # MoGA alone, one group with gate 1: dense attention
    (dict(attention=ONE_GROUP, scan_layers=True), ["blocks.self_attn.router.proj.kernel"]),
  ],
  ids=["dense", "moga_1group", "moga_1group_scanned"],
)
def test_matches_diffusers(reference, inputs, kwargs, routers):
  model, config, folder = reference
  dit = VideoDiT(**dit_kwargs_from_diffusers(config), **kwargs, rngs=nnx.Rngs(1))
  report = load_wan_dit(folder, dit)
  assert report.initialised == routers
  if not dit.scan_layers:
    assert len(report.loaded) == len(dict(model.named_parameters()))
  want = _reference_output(model, *inputs)
  got, balance = _ours(dit, *inputs)
  assert got.shape == want.shape
  err = rel_err(got, want)
  print(f"{kwargs}: relative error {err:.3g}")
  # Measured 5.9e-7 (float32, 2026-11-25). 5e-6 fails an exact GELU in place of Wan's tanh
  # approximation (4.8e-5), which the old 1e-4 bar let through.
  assert err < 5e-6, f"relative error {err:.3g}"
  assert balance == pytest.approx(0.0 if kwargs["attention"] is None else 1.0)


def test_layer_norms_survive_large_token_means():
  """Residual streams can carry a per-token offset far above their spread; torch's layer norm
  is exact there, flax's default one-pass variance is not."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((64, 32), np.float32) + rng.normal(0, 300, (64, 1)).astype(np.float32)
  dit = VideoDiT(**dit_kwargs_from_diffusers(TINY), rngs=nnx.Rngs(1))
  want = torch.nn.functional.layer_norm(torch.from_numpy(x), (32,), eps=1e-6).numpy()
  block = dit.blocks[0]
  for norm in (block.norm1, block.norm2, block.norm3, dit.head_norm):  # norm3 at scale 1, bias 0
    assert rel_err(norm(jnp.asarray(x)), want) < 1e-4


def test_weight_problems_are_reported_by_name(reference, tmp_path):
  _, config, folder = reference
  tensors = load_file(folder / WEIGHTS)
  del tensors["blocks.1.attn2.to_k.bias"]
  tensors["blocks.0.attn2.add_k_proj.weight"] = np.zeros((32, 32), np.float32)
  tensors["proj_out.weight"] = tensors["proj_out.weight"][:-1]
  save_file(tensors, tmp_path / WEIGHTS)
  dit = VideoDiT(**dit_kwargs_from_diffusers(config), rngs=nnx.Rngs(1))
  before = np.asarray(dit.head.bias[...])
  report = load_wan_dit(tmp_path, dit, strict=False)
  assert "blocks.1.cross_attn.k.bias" in report.missing
  assert report.unexpected == ["blocks.0.attn2.add_k_proj.weight"]
  assert len(report.mismatched) == 1
  assert "head.kernel" in report.mismatched[0] and "'proj_out.weight'" in report.mismatched[0]
  np.testing.assert_array_equal(dit.head.bias[...], before)  # nothing half-loaded
  with pytest.raises(ValueError, match=r"(?s)cross_attn\.k\.bias.*add_k_proj.*proj_out"):
    load_wan_dit(tmp_path, dit)


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(image_dim=1280, added_kv_proj_dim=32), "image conditioning"),
    (dict(added_kv_proj_dim=32), "added_kv_proj_dim"),
    (dict(pos_embed_seq_len=514), "pos_embed_seq_len"),
    (dict(qk_norm="rms_norm"), "qk_norm"),
    (dict(cross_attn_norm=False), "cross_attn_norm"),
    (dict(eps=1e-5), "eps"),
    (dict(window_size=(4, 4)), "window_size"),
    (dict(_class_name="WanVACETransformer3DModel"), "WanVACETransformer3DModel"),
  ],
)
def test_unsupported_configs_are_refused(reference, change, message):
  with pytest.raises(ValueError, match=message):
    dit_kwargs_from_diffusers(reference[1] | change)


def test_defaults_are_diffusers_defaults():
  """A config.json may omit keys; they must then mean what they mean to diffusers."""
  import inspect

  from diffusers import WanTransformer3DModel

  params = inspect.signature(WanTransformer3DModel.__init__).parameters
  defaults = {k: p.default for k, p in params.items() if k != "self"}
  assert dit_kwargs_from_diffusers({}) == dit_kwargs_from_diffusers(defaults)
  assert dit_kwargs_from_diffusers({}) == dict(
    in_channels=16,
    out_channels=16,
    dim=5120,
    ffn_dim=13824,
    num_layers=40,
    num_heads=40,
    text_dim=4096,
    patch=(1, 2, 2),
    freq_dim=256,
  )
