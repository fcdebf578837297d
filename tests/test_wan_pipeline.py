"""The converted Wan DiT against diffusers, and the torch-free fixtures against the PyTorch
models they stand in for.

A diffusers-layout folder of tiny PyTorch models (tests/wan_reference.py) is converted and the
converted DiT's velocity is checked against diffusers' WanTransformer3DModel. The rest of the
Wan path (convert -> load -> train -> sample -> export) runs in the main job on torch-free
fixtures (tests/wan_fixtures.py, tests/test_wan_path.py); here those fixtures' tensor names,
shapes and config fields are checked against the files diffusers and transformers save.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("sentencepiece")

import jax.numpy as jnp  # noqa: E402
import wan_fixtures  # noqa: E402
import wan_reference  # noqa: E402
from flax import nnx  # noqa: E402
from wan_fixtures import tiny_config  # noqa: E402
from wan_reference import rel_err  # noqa: E402

from moga_jax.model.text_to_video import dit_from_config  # noqa: E402
from moga_jax.train.config_files import load_config_module  # noqa: E402
from moga_jax.wan import converted_folder as converted  # noqa: E402
from moga_jax.wan.convert import convert  # noqa: E402
from moga_jax.wan.dit_weights import load_wan_dit  # noqa: E402
from moga_jax.wan.weights import read_safetensors  # noqa: E402

# One worker builds the module fixtures (reference models) once (--dist loadgroup).
pytestmark = [pytest.mark.parity, pytest.mark.xdist_group("wan_pipeline")]

U = wan_reference.UMT5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(diffusers folder, its torch models by component)."""
  root = tmp_path_factory.mktemp("wan") / "diffusers"
  return root, wan_reference.save_pipeline(root)


def _velocity(model, latents, t, context) -> np.ndarray:
  with torch.no_grad():
    want = model(
      torch.from_numpy(latents),
      torch.from_numpy(1000.0 * t),
      torch.from_numpy(context),
      return_dict=False,
    )[0].numpy()
  return np.moveaxis(want, 1, -1)


def _ours(dit, latents, t, context):
  got, _ = dit(
    jnp.asarray(np.moveaxis(latents, 1, -1)),
    jnp.asarray(t),
    jnp.asarray(context)[:, None],
    jnp.ones((1, 1, context.shape[1]), bool),
    jnp.zeros((1, latents.shape[2]), jnp.int32),
  )
  return got


def test_torch_free_fixtures_are_the_reference_models_files(reference, tmp_path):
  """tests/wan_fixtures.py writes the tensor names, shapes and dtypes (and the architecture's
  config fields) that diffusers' and transformers' save_pretrained write for the same sizes."""
  source, _ = reference
  fixture = wan_fixtures.save_pipeline(tmp_path / "fixture")
  for component in ("transformer", "vae", "text_encoder"):
    shapes = [
      {
        name: (x.shape, x.dtype)
        for name, x in read_safetensors(root / component).items()
        if name != "encoder.embed_tokens.weight"  # umT5's tied copy of shared.weight, if saved
      }
      for root in (fixture, source)
    ]
    assert shapes[0] == shapes[1], component
  config = lambda root, c: json.loads((root / c / "config.json").read_text())
  for component, keys in (
    ("transformer", None),
    ("vae", None),
    ("text_encoder", [*U, "model_type", "feed_forward_proj", "dense_act_fn", "is_gated_act"]),
  ):
    ours, theirs = config(fixture, component), config(source, component)
    for key in keys or [k for k in ours if not k.startswith("_")]:
      assert theirs[key] == ours[key], (component, key)


def test_converted_dit_computes_what_diffusers_does(reference, tmp_path):
  """MoGA with one group (no STGA, no frame branch) is dense attention: the DiT loaded from
  diffusers' file computes Wan's velocity."""
  source, models = reference
  one_group = tiny_config(
    **{
      "model.attention.num_groups": 1,
      "model.attention.stga_windows": None,
      "model.attention.frame_attention": False,
    }
  )
  dit = dit_from_config(one_group.model, rngs=nnx.Rngs(0))
  load_wan_dit(source / "transformer", dit)
  rng = np.random.default_rng(3)
  latents = rng.standard_normal((1, 4, 3, 4, 6), np.float32)  # [B, C, F, H, W]
  context = rng.standard_normal((1, 5, U["d_model"]), np.float32)
  t = np.array([0.4], np.float32)
  want = _velocity(models["transformer"], latents, t, context)
  assert rel_err(_ours(dit, latents, t, context), want) < 1e-4


def test_dense_wan_config_converts_and_computes_what_diffusers_does(reference, tmp_path):
  """configs/wan1_3b.py (no MoGA): nothing initialised, and the converted DiT's velocity equals
  diffusers' WanTransformer3DModel's at the float32 parity bar."""
  wan1_3b = load_config_module("wan1_3b")

  source, models = reference
  out = tmp_path / "dense"
  reports = convert(source, out, wan1_3b.get_config(), ["transformer"])
  assert "initialised" not in reports[0] and "router" not in reports[0], reports[0]
  cfg = converted.with_converted_widths(wan1_3b.get_config(), out)
  cfg.model.dtype = "float32"  # the parity bar is float32's (the config trains in bfloat16)
  dit = converted.load_dit(out, cfg.model)
  rng = np.random.default_rng(4)
  latents = rng.standard_normal((1, 4, 3, 4, 6), np.float32)  # [B, C, F, H, W]
  context = rng.standard_normal((1, 5, U["d_model"]), np.float32)
  t = np.array([0.7], np.float32)
  want = _velocity(models["transformer"], latents, t, context)
  assert rel_err(_ours(dit, latents, t, context), want) < 5e-6
