"""Tiny random Wan 2.1 components in diffusers' layout, written without torch.

`save_pipeline(root)` writes what a diffusers Wan 2.1 T2V folder holds (transformer/, vae/,
text_encoder/, tokenizer/): config.json files and .safetensors files (written with the
`safetensors` package's numpy API, not our own writer) whose tensor names and shapes are the
ones diffusers' WanTransformer3DModel and AutoencoderKLWan and transformers' UMT5EncoderModel
save, listed here from those classes' constructors (torch layouts: Linear [out, in], Conv
[out, in, *kernel], the VAE's RMS gammas [C, 1, 1(, 1)]). Our loaders refuse missing and
unexpected tensors, so a fixture that converts and loads has the right names and shapes;
tests/test_wan_pipeline.py (parity) also compares them with the PyTorch models' own files.

Weights are random from numpy with a fixed seed, every one of them (norm scales, biases,
modulation tables), drawn as tests/wan_reference.py draws the torch models' weights, so a
misplaced tensor changes outputs. The tokenizer is a tiny `tokenizers` Unigram built in code:
T5's special ids (pad 0, EOS 1, unk 2), Metaspace pre-tokenizer, EOS appended.
"""

from __future__ import annotations

import itertools
import json
import string
from pathlib import Path

import numpy as np

# The sizes (diffusers / transformers constructor arguments); tests/wan_reference.py builds its
# torch models from these too.
DIT = dict(
  patch_size=(1, 2, 2),
  num_attention_heads=2,
  attention_head_dim=16,
  in_channels=4,
  out_channels=4,
  text_dim=24,
  freq_dim=32,
  ffn_dim=64,
  num_layers=2,
)
VAE = dict(
  base_dim=8,
  z_dim=4,
  dim_mult=[1, 2, 2, 2],
  num_res_blocks=1,
  attn_scales=[],
  temperal_downsample=[False, True, True],
  latents_mean=[0.3, -0.5, 0.1, 1.2],
  latents_std=[1.7, 0.6, 2.3, 1.1],
)
UMT5 = dict(
  vocab_size=300,
  d_model=32,
  d_kv=8,
  d_ff=64,
  num_layers=2,
  num_heads=4,
  relative_attention_num_buckets=32,
  relative_attention_max_distance=128,
)

SENTENCES = [
  "A cat walks across a sunny garden, slowly.",
  "Ein Hund läuft über die grüne Wiese.",
  "Le chat dort sur le canapé rouge.",
  "Waves crash on a rocky shore at sunset.",
  "一只猫在花园里散步。",
  "The camera pans over a city at night; neon lights flicker.",
]


def rel_err(a, b) -> float:
  """||a - b|| / ||b|| in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- tensor names and shapes, as the reference classes save them -----------------------------


def dit_shapes(**overrides) -> dict[str, tuple[int, ...]]:
  """diffusers WanTransformer3DModel (Wan 2.1 T2V: no image embedder) state dict shapes."""
  c = {**DIT, **overrides}
  inner = c["num_attention_heads"] * c["attention_head_dim"]
  ffn, patch = c["ffn_dim"], tuple(c["patch_size"])
  linear = lambda name, n_out, n_in: {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}
  shapes = {
    "patch_embedding.weight": (inner, c["in_channels"], *patch),
    "patch_embedding.bias": (inner,),
    **linear("condition_embedder.time_embedder.linear_1", inner, c["freq_dim"]),
    **linear("condition_embedder.time_embedder.linear_2", inner, inner),
    **linear("condition_embedder.time_proj", 6 * inner, inner),
    **linear("condition_embedder.text_embedder.linear_1", inner, c["text_dim"]),
    **linear("condition_embedder.text_embedder.linear_2", inner, inner),
  }
  for i in range(c["num_layers"]):
    b = f"blocks.{i}"
    shapes[f"{b}.scale_shift_table"] = (1, 6, inner)
    for attn in ("attn1", "attn2"):
      for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        shapes.update(linear(f"{b}.{attn}.{proj}", inner, inner))
      # qk_norm="rms_norm_across_heads": one RMSNorm over all heads, weight only
      shapes[f"{b}.{attn}.norm_q.weight"] = (inner,)
      shapes[f"{b}.{attn}.norm_k.weight"] = (inner,)
    # cross_attn_norm: the affine LayerNorm before cross-attention (norm1 / norm3 have no
    # parameters)
    shapes[f"{b}.norm2.weight"] = (inner,)
    shapes[f"{b}.norm2.bias"] = (inner,)
    shapes.update(linear(f"{b}.ffn.net.0.proj", ffn, inner))
    shapes.update(linear(f"{b}.ffn.net.2", inner, ffn))
  shapes.update(linear("proj_out", c["out_channels"] * int(np.prod(patch)), inner))
  shapes["scale_shift_table"] = (1, 2, inner)
  return shapes


def _vae_residual(prefix: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
  """WanResidualBlock: RMS norms (images=False: [C, 1, 1, 1]), causal 3x3x3 convs, and a 1x1x1
  shortcut conv when the width changes."""
  shapes = {
    f"{prefix}.norm1.gamma": (n_in, 1, 1, 1),
    f"{prefix}.conv1.weight": (n_out, n_in, 3, 3, 3),
    f"{prefix}.conv1.bias": (n_out,),
    f"{prefix}.norm2.gamma": (n_out, 1, 1, 1),
    f"{prefix}.conv2.weight": (n_out, n_out, 3, 3, 3),
    f"{prefix}.conv2.bias": (n_out,),
  }
  if n_in != n_out:
    shapes[f"{prefix}.conv_shortcut.weight"] = (n_out, n_in, 1, 1, 1)
    shapes[f"{prefix}.conv_shortcut.bias"] = (n_out,)
  return shapes


def _vae_mid(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
  """WanMidBlock(num_layers=1): resnet, single-head attention (2D 1x1 convs, RMS norm with
  images=True: [C, 1, 1]), resnet."""
  a = f"{prefix}.attentions.0"
  return {
    **_vae_residual(f"{prefix}.resnets.0", dim, dim),
    f"{a}.norm.gamma": (dim, 1, 1),
    f"{a}.to_qkv.weight": (3 * dim, dim, 1, 1),
    f"{a}.to_qkv.bias": (3 * dim,),
    f"{a}.proj.weight": (dim, dim, 1, 1),
    f"{a}.proj.bias": (dim,),
    **_vae_residual(f"{prefix}.resnets.1", dim, dim),
  }


def _vae_resample(prefix: str, dim: int, mode: str) -> dict[str, tuple[int, ...]]:
  """WanResample: a 2D 3x3 conv after padding / upsampling (resample.1), and for the 3D modes a
  causal temporal conv (3, 1, 1). Upsampling halves the width (upsample_out_dim = dim // 2)."""
  n_out = dim // 2 if mode.startswith("upsample") else dim
  shapes = {
    f"{prefix}.resample.1.weight": (n_out, dim, 3, 3),
    f"{prefix}.resample.1.bias": (n_out,),
  }
  if mode == "upsample3d":
    shapes[f"{prefix}.time_conv.weight"] = (2 * dim, dim, 3, 1, 1)
    shapes[f"{prefix}.time_conv.bias"] = (2 * dim,)
  elif mode == "downsample3d":
    shapes[f"{prefix}.time_conv.weight"] = (dim, dim, 3, 1, 1)
    shapes[f"{prefix}.time_conv.bias"] = (dim,)
  return shapes


def vae_shapes() -> dict[str, tuple[int, ...]]:
  """diffusers AutoencoderKLWan (Wan 2.1: is_residual=False, attn_scales=[], 3 channels)."""
  c = VAE
  z, mult, res = c["z_dim"], list(c["dim_mult"]), c["num_res_blocks"]
  conv3 = lambda name, n_out, n_in, k: {
    f"{name}.weight": (n_out, n_in, k, k, k),
    f"{name}.bias": (n_out,),
  }
  shapes: dict[str, tuple[int, ...]] = {}
  # Encoder (z_dim * 2 outputs: mean and log-variance).
  dims = [c["base_dim"] * u for u in [1, *mult]]
  shapes.update(conv3("encoder.conv_in", dims[0], 3, 3))
  index = 0
  for i, (n_in, n_out) in enumerate(itertools.pairwise(dims)):
    for _ in range(res):
      shapes.update(_vae_residual(f"encoder.down_blocks.{index}", n_in, n_out))
      index, n_in = index + 1, n_out
    if i != len(mult) - 1:
      mode = "downsample3d" if c["temperal_downsample"][i] else "downsample2d"
      shapes.update(_vae_resample(f"encoder.down_blocks.{index}", n_out, mode))
      index += 1
  shapes.update(_vae_mid("encoder.mid_block", dims[-1]))
  shapes["encoder.norm_out.gamma"] = (dims[-1], 1, 1, 1)
  shapes.update(conv3("encoder.conv_out", 2 * z, dims[-1], 3))
  shapes.update(conv3("quant_conv", 2 * z, 2 * z, 1))
  shapes.update(conv3("post_quant_conv", z, z, 1))
  # Decoder (decoder_base_dim = base_dim; temporal upsampling mirrors the downsampling).
  up = list(c["temperal_downsample"])[::-1]
  dims = [c["base_dim"] * u for u in [mult[-1], *mult[::-1]]]
  shapes.update(conv3("decoder.conv_in", dims[0], z, 3))
  shapes.update(_vae_mid("decoder.mid_block", dims[0]))
  for i, (n_in, n_out) in enumerate(itertools.pairwise(dims)):
    if i > 0:
      n_in //= 2  # the previous block's upsampler halved the width
    for j in range(res + 1):
      shapes.update(_vae_residual(f"decoder.up_blocks.{i}.resnets.{j}", n_in, n_out))
      n_in = n_out
    if i != len(mult) - 1:
      mode = "upsample3d" if up[i] else "upsample2d"
      shapes.update(_vae_resample(f"decoder.up_blocks.{i}.upsamplers.0", n_out, mode))
  shapes["decoder.norm_out.gamma"] = (dims[-1], 1, 1, 1)
  shapes.update(conv3("decoder.conv_out", 3, dims[-1], 3))
  return shapes


def umt5_shapes() -> dict[str, tuple[int, ...]]:
  """transformers UMT5EncoderModel (gated GELU; a relative position bias in every layer). The
  tied token embedding is saved once, as `shared.weight`."""
  c = UMT5
  d, inner, ff = c["d_model"], c["num_heads"] * c["d_kv"], c["d_ff"]
  shapes = {"shared.weight": (c["vocab_size"], d)}
  for i in range(c["num_layers"]):
    a, f = f"encoder.block.{i}.layer.0", f"encoder.block.{i}.layer.1"
    shapes.update(
      {
        f"{a}.SelfAttention.q.weight": (inner, d),
        f"{a}.SelfAttention.k.weight": (inner, d),
        f"{a}.SelfAttention.v.weight": (inner, d),
        f"{a}.SelfAttention.o.weight": (d, inner),
        f"{a}.SelfAttention.relative_attention_bias.weight": (
          c["relative_attention_num_buckets"],
          c["num_heads"],
        ),
        f"{a}.layer_norm.weight": (d,),
        f"{f}.DenseReluDense.wi_0.weight": (ff, d),
        f"{f}.DenseReluDense.wi_1.weight": (ff, d),
        f"{f}.DenseReluDense.wo.weight": (d, ff),
        f"{f}.layer_norm.weight": (d,),
      }
    )
  shapes["encoder.final_layer_norm.weight"] = (d,)
  return shapes


# --- random weights and files ------------------------------------------------------------------


def _fan_in(shape: tuple[int, ...]) -> int:
  return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _dit_weight(rng, name: str, shape) -> np.ndarray:
  if "norm" in name and name.endswith("weight"):
    return rng.uniform(0.5, 1.5, shape)
  if name.endswith("bias") or "scale_shift_table" in name:
    return rng.normal(0.0, 0.3, shape)
  return rng.normal(0.0, 1.5 / _fan_in(shape) ** 0.5, shape)


def _vae_weight(rng, name: str, shape) -> np.ndarray:
  if name.endswith("gamma"):
    return rng.uniform(0.5, 1.5, shape)
  if name.endswith("bias"):
    return rng.normal(0.0, 0.1, shape)
  return rng.normal(0.0, 1.0 / _fan_in(shape) ** 0.5, shape)  # activations stay O(1)


def _umt5_weight(rng, name: str, shape) -> np.ndarray:
  if "layer_norm" in name:
    return rng.uniform(0.5, 1.5, shape)
  if "relative_attention_bias" in name or "shared" in name:
    return rng.normal(0.0, 1.0, shape)
  return rng.normal(0.0, 0.2, shape)


def _write(folder: Path, file: str, shapes: dict, draw, seed: int, config: dict) -> None:
  from safetensors.numpy import save_file

  rng = np.random.default_rng(seed)
  tensors = {n: np.asarray(draw(rng, n, s), np.float32) for n, s in shapes.items()}
  folder.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(folder / file), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(config, indent=2))


def save_dit(folder: Path, seed: int = 0, **overrides) -> None:
  c = {**DIT, **overrides}
  config = {
    "_class_name": "WanTransformer3DModel",
    "_diffusers_version": "0.35.0",
    **c,
    "patch_size": list(c["patch_size"]),
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
  }
  shapes = dit_shapes(**overrides)
  _write(folder, "diffusion_pytorch_model.safetensors", shapes, _dit_weight, seed, config)


def save_vae(folder: Path, seed: int = 1) -> None:
  config = {
    "_class_name": "AutoencoderKLWan",
    "_diffusers_version": "0.35.0",
    **VAE,
    "decoder_base_dim": None,
    "dropout": 0.0,
    "is_residual": False,
    "in_channels": 3,
    "out_channels": 3,
    "patch_size": None,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 8,
  }
  _write(folder, "diffusion_pytorch_model.safetensors", vae_shapes(), _vae_weight, seed, config)


def save_umt5(folder: Path, seed: int = 2) -> None:
  config = {
    "architectures": ["UMT5EncoderModel"],
    "model_type": "umt5",
    **UMT5,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.0,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "tie_word_embeddings": False,
    "tokenizer_class": "T5Tokenizer",
    "torch_dtype": "float32",
    "use_cache": True,
  }
  _write(folder, "model.safetensors", umt5_shapes(), _umt5_weight, seed, config)


SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2


def tokenizer_vocab() -> list[tuple[str, float]]:
  """Unigram pieces: T5's specials, the word boundary, every character of SENTENCES and of
  printable ASCII, and SENTENCES' words (more likely than their spelling, so they are one
  token each)."""
  chars = sorted(set("".join(SENTENCES)) | set(string.ascii_letters + string.digits))
  chars += [ch for ch in string.punctuation if ch not in chars]
  words = sorted({f"\u2581{w}" for s in SENTENCES for w in s.split()})
  vocab = [(t, 0.0) for t in SPECIAL_TOKENS] + [("\u2581", -2.0)]
  vocab += [(ch, -5.0) for ch in chars if not ch.isspace()]
  vocab += [(w, -3.0) for w in words if w not in dict(vocab)]
  assert len(vocab) <= UMT5["vocab_size"], len(vocab)
  return vocab


def save_tokenizer(folder: Path) -> None:
  """tokenizer.json (a `tokenizers` Unigram, T5-style) + tokenizer_config.json, as
  transformers' T5TokenizerFast saves them."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  tokenizer = Tokenizer(models.Unigram(tokenizer_vocab(), unk_id=2, byte_fallback=False))
  tokenizer.normalizer = normalizers.Sequence(
    [normalizers.NFKC(), normalizers.Replace(" {2,}", " ")]
  )
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
  tokenizer.post_processor = processors.TemplateProcessing(
    single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
  )
  for t in SPECIAL_TOKENS:
    tokenizer.add_special_tokens([t])
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(folder / "tokenizer.json"))
  settings = {
    "tokenizer_class": "T5Tokenizer",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "extra_ids": 0,
    "model_max_length": 512,
    "padding_side": "right",
  }
  (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))


def save_pipeline(root: Path) -> Path:
  """A diffusers-layout Wan 2.1 T2V folder whose parts fit together (the DiT reads the umT5's
  width and the VAE's latent channels); returns root."""
  root.mkdir(parents=True, exist_ok=True)
  save_dit(
    root / "transformer",
    text_dim=UMT5["d_model"],
    in_channels=VAE["z_dim"],
    out_channels=VAE["z_dim"],
  )
  save_vae(root / "vae")
  save_umt5(root / "text_encoder")
  save_tokenizer(root / "tokenizer")
  (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
  return root


# --- the run config that fits them ---------------------------------------------------------------

# configs/wan1_3b_moga.py shrunk to the tiny components: 9 frames of 32x48 are a 3x4x6 latent,
# 3x2x3 tokens; the paper's block with 2 MoGA groups (2x2 STGA windows split 2x3 unevenly).
TINY = {
  "model.dim": DIT["num_attention_heads"] * DIT["attention_head_dim"],
  "model.ffn_dim": DIT["ffn_dim"],
  "model.num_layers": DIT["num_layers"],
  "model.num_heads": DIT["num_attention_heads"],
  "model.text_dim": UMT5["d_model"],
  "model.freq_dim": DIT["freq_dim"],
  "model.in_channels": VAE["z_dim"],
  "model.attention.num_groups": 2,
  "video.frames": 9,
  "video.height": 32,
  "video.width": 48,
  "video.caption_len": 16,
  "sample.steps": 3,
  "sample.text_encoder_dtype": "float32",
  "train.batch_size": 1,
  # One device, float32 and unscanned blocks as diffusers computes them (the config's own
  # mesh, bfloat16 compute and memory settings are for its TPU slice).
  "train.grad_accum_steps": 1,
  "sharding.mesh.data": -1,
  "sharding.mesh.fsdp": 1,
  "sharding.mesh.context": 1,
  "model.dtype": "float32",
  "model.scan_layers": False,
  "model.remat": "none",
}


def tiny_config(**overrides):
  """configs/wan1_3b_moga.py with TINY and overrides ({"section.field": value})."""
  from moga_jax.train.config_files import load_config_module

  cfg = load_config_module("wan1_3b_moga").get_config()
  for key, value in {**TINY, **overrides}.items():
    *path, leaf = key.split(".")
    section = cfg
    for name in path:
      section = section[name]
    section[leaf] = value
  return cfg


def flags(values: dict) -> list[str]:
  """--config.<key>=<value> flags for train.py / sample.py."""
  as_flag = lambda v: ",".join(map(str, v)).join("()") if isinstance(v, tuple) else str(v)
  return [f"--config.{k}={as_flag(v)}" for k, v in values.items()]
