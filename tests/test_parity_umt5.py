"""umT5 encoder, tokenizer and prompt embeddings against transformers / diffusers, in float32.

The references are tiny and random (every weight, layer norms included, so a wrong norm fails);
the tokenizer is a SentencePiece Unigram trained here on a few sentences, with T5's special ids.
"""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
import wan_reference  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from wan_reference import rel_err  # noqa: E402

from moga_jax.wan.tokenizer import clean_prompt, encode_prompts, load_tokenizer  # noqa: E402
from moga_jax.wan.umt5 import UMT5Config, prompt_embeddings, relative_position_buckets  # noqa: E402
from moga_jax.wan.umt5_weights import load_umt5  # noqa: E402

# One worker builds the module fixtures (reference models) once (--dist loadgroup).
pytestmark = [pytest.mark.parity, pytest.mark.xdist_group("parity_umt5")]

TINY = wan_reference.UMT5
SENTENCES = wan_reference.SENTENCES

PROMPTS = [
  "A cat walks across a sunny garden.",
  "  Ein Hund\tläuft \n\n über   die Wiese  ",
  "Tom &amp;amp; Jerry &lt;3 \u2014 \uff46\uff55\uff4c\uff4c \u2460 text",  # NFKC folds
  "",
  "night city </s> neon 🎬 lights",
  " ".join(SENTENCES * 30),  # far beyond max_len: truncated, EOS kept
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A random torch UMT5EncoderModel saved as safetensors: (model, folder)."""
  folder = tmp_path_factory.mktemp("umt5")
  model = wan_reference.save_umt5(folder)
  return model, folder


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
  """{layout: folder}: as transformers 5 saves it, and in the layout of transformers 4's
  SentencePiece conversion (Strip/Replace normalizer, lone Metaspace), which published
  tokenizer.json files may carry; transformers 5 rebuilds those parts, we read the file as is."""
  pytest.importorskip("sentencepiece")
  root = tmp_path_factory.mktemp("tok")
  wan_reference.save_tokenizer(root / "saved", spm_folder=root / "spm")

  legacy = root / "legacy"
  shutil.copytree(root / "saved", legacy)
  spec = json.loads((legacy / "tokenizer.json").read_text())
  assert spec["normalizer"]["type"] == "Precompiled"
  spec["normalizer"] = {
    "type": "Sequence",
    "normalizers": [
      spec["normalizer"],
      {"type": "Strip", "strip_left": False, "strip_right": True},
      {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "▁"},
    ],
  }
  spec["pre_tokenizer"] = {
    "type": "Metaspace",
    "replacement": "▁",
    "prepend_scheme": "always",
    "split": True,
  }
  (legacy / "tokenizer.json").write_text(json.dumps(spec))
  return {"saved": root / "saved", "legacy": legacy, "spm_only": root / "spm"}


def test_buckets_match_transformers():
  from transformers import UMT5Config as TorchConfig
  from transformers.models.umt5.modeling_umt5 import UMT5Attention

  offsets = np.arange(-1100, 1101)
  for buckets, distance in ((32, 128), (64, 256), (16, 64), (8, 20), (32, 50)):
    attn = UMT5Attention(
      TorchConfig(relative_attention_num_buckets=buckets, relative_attention_max_distance=distance),
      has_relative_attention_bias=True,
    )
    want = attn._relative_position_bucket(torch.from_numpy(offsets)).numpy()
    got = relative_position_buckets(offsets, buckets, distance)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"({buckets}, {distance}): offsets {offsets[bad][:8]} differ"


def test_encoder_matches_transformers(reference):
  model, folder = reference
  encoder, report = load_umt5(folder)
  assert report.ok and len(report.loaded) == 2 + 10 * TINY["num_layers"]
  rng = np.random.default_rng(1)
  # 160 > max_distance, so the clipped buckets are exercised too.
  batch, length = 3, 160
  ids = rng.integers(3, TINY["vocab_size"], (batch, length))
  lengths = np.array([length, 97, 5])
  mask = np.arange(length)[None, :] < lengths[:, None]
  ids = np.where(mask, ids, 0)
  with torch.no_grad():
    want = model(torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)))
  want = want.last_hidden_state.numpy()
  got = np.asarray(encoder(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
  assert got.dtype == np.float32
  # Both mask keys only, so padded query positions are defined alike: compare everything.
  err = rel_err(got, want)
  print(f"umT5 encoder float32 relative error {err:.2e}")
  assert err < 5e-6  # measured 7.6e-7 (2026-11-25)

  encoder_bf16, _ = load_umt5(folder, dtype=jnp.bfloat16)
  got_bf16 = np.asarray(encoder_bf16(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
  err = rel_err(got_bf16[mask], want[mask])
  print(f"umT5 encoder bfloat16-compute relative error {err:.2e}")
  assert got_bf16.dtype == np.float32 and err < 3e-2


@pytest.mark.parametrize("layout", ["saved", "legacy"])
def test_tokenizer_matches_transformers(tokenizer_dirs, layout):
  pytest.importorskip("diffusers")
  from diffusers.pipelines.wan.pipeline_wan import prompt_clean
  from transformers import AutoTokenizer

  folder = tokenizer_dirs[layout]
  assert [clean_prompt(p) for p in PROMPTS] == [prompt_clean(p) for p in PROMPTS]
  hf = AutoTokenizer.from_pretrained(folder)
  want = hf(
    [prompt_clean(p) for p in PROMPTS],
    padding="max_length",
    max_length=512,
    truncation=True,
    add_special_tokens=True,
    return_attention_mask=True,
    return_tensors="np",
  )
  ids, mask = encode_prompts(load_tokenizer(folder), PROMPTS, 512)
  assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids.shape == (len(PROMPTS), 512)
  np.testing.assert_array_equal(ids, want["input_ids"])
  np.testing.assert_array_equal(mask, want["attention_mask"].astype(bool))
  assert mask[-1].all() and ids[-1, -1] == 1  # truncated to max_len, still EOS-terminated
  assert ids[3, 0] == 1 and mask[3].sum() == 1  # the empty prompt is just EOS


def test_prompt_embeddings_match_diffusers(reference, tokenizer_dirs):
  pytest.importorskip("diffusers")
  from diffusers import WanPipeline
  from transformers import AutoTokenizer

  model, folder = reference
  tok_dir = tokenizer_dirs["saved"]
  pipe = types.SimpleNamespace(
    tokenizer=AutoTokenizer.from_pretrained(tok_dir),
    text_encoder=model,
    _execution_device=torch.device("cpu"),
  )
  with torch.no_grad():
    want = WanPipeline._get_t5_prompt_embeds(
      pipe, PROMPTS, max_sequence_length=96, dtype=torch.float32
    ).numpy()
  encoder, _ = load_umt5(folder)
  ids, mask = encode_prompts(load_tokenizer(tok_dir), PROMPTS, 96)
  got = np.asarray(prompt_embeddings(encoder, jnp.asarray(ids), jnp.asarray(mask)))
  assert (got[~mask] == 0).all() and (want[~mask] == 0).all()
  err = rel_err(got, want)
  print(f"prompt -> embeddings relative error {err:.2e}")
  assert err < 5e-6  # measured 8.2e-7 (2026-11-25)


def _broken_copy(folder, dest, edit):
  tensors = load_file(folder / "model.safetensors")
  edit(tensors)
  dest.mkdir()
  save_file(tensors, dest / "model.safetensors")
  shutil.copy(folder / "config.json", dest / "config.json")
  return dest


def _embed_as_encoder(t):
  t["encoder.embed_tokens.weight"] = t.pop("shared.weight")


def _embed_twice(t):
  t["encoder.embed_tokens.weight"] = t["shared.weight"].copy()


@pytest.mark.parametrize("edit", [_embed_as_encoder, _embed_twice])
def test_tied_embedding_under_either_name(reference, tmp_path, edit):
  model, folder = reference
  encoder, _ = load_umt5(_broken_copy(folder, tmp_path / edit.__name__, edit))
  np.testing.assert_array_equal(
    np.asarray(encoder.embed.embedding[...]), model.shared.weight.detach().numpy()
  )


@pytest.mark.parametrize(
  "case, edit, named",
  [
    (
      "missing",
      lambda t: t.pop("encoder.block.1.layer.1.DenseReluDense.wi_1.weight"),
      "layers.1.ffn.wi_1.kernel",
    ),
    (
      "unexpected",
      lambda t: t.update(
        {"encoder.block.0.layer.0.SelfAttention.qq.weight": np.zeros((4, 4), np.float32)}
      ),
      "encoder.block.0.layer.0.SelfAttention.qq.weight",
    ),
    (
      "mis-shaped",
      lambda t: t.update(
        {"encoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((16, 32), np.float32)}
      ),
      "layers.0.attn.q.kernel",
    ),
  ],
)
def test_weight_errors_name_the_tensor(reference, tmp_path, case, edit, named):
  broken = _broken_copy(reference[1], tmp_path / case, edit)
  with pytest.raises(ValueError, match=case) as info:
    load_umt5(broken)
  assert named in str(info.value)


def test_config_and_tokenizer_folder_errors(tmp_path, tokenizer_dirs):
  config = tmp_path / "config.json"
  config.write_text(json.dumps({**TINY, "model_type": "umt5", "feed_forward_proj": "relu"}))
  with pytest.raises(ValueError, match="feed_forward_proj='relu'"):
    UMT5Config.from_json(config)
  hint = r"no tokenizer\.json.*spiece\.model.*save_pretrained"
  with pytest.raises(FileNotFoundError, match=hint):
    load_tokenizer(tokenizer_dirs["spm_only"])
