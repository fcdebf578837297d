"""Tiny, randomly initialised PyTorch Wan 2.1 components for the parity and pipeline tests.

Every parameter is random (norm scales and biases, modulation tables and the zero-initialised
output head included), so a misplaced tensor or a differing op shows in the outputs. Each
builder saves its model as diffusers / transformers do (safetensors + config.json) and returns
it. Importing this module needs torch; tests import it after `pytest.importorskip("torch")`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

# The sizes, the sentences and rel_err are the torch-free fixtures' (tests/wan_fixtures.py).
from wan_fixtures import DIT, SENTENCES, UMT5, VAE, rel_err  # noqa: F401


def save_dit(folder: Path, **overrides):
  """A random diffusers WanTransformer3DModel (DIT, with overrides) saved to folder."""
  from diffusers import WanTransformer3DModel

  torch.manual_seed(0)
  model = WanTransformer3DModel(**{**DIT, **overrides}).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.uniform_(0.5, 1.5)
      elif name.endswith("bias") or "scale_shift_table" in name:
        p.normal_(0.0, 0.3)
      else:
        p.normal_(0.0, 1.5 / p[0].numel() ** 0.5)
  model.save_pretrained(folder, safe_serialization=True)
  return model


def save_vae(folder: Path):
  """A random diffusers AutoencoderKLWan (VAE) saved to folder."""
  from diffusers import AutoencoderKLWan

  torch.manual_seed(0)
  model = AutoencoderKLWan(**VAE).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("gamma"):
        p.uniform_(0.5, 1.5)
      elif name.endswith("bias"):
        p.normal_(0.0, 0.1)
      else:  # unit-variance fan-in scaling, so activations stay O(1) through the depth
        p.normal_(0.0, 1.0 / np.sqrt(p[0].numel()))
  model.save_pretrained(folder, safe_serialization=True)
  return model


def save_umt5(folder: Path):
  """A random transformers UMT5EncoderModel (UMT5) saved to folder."""
  from transformers import UMT5Config, UMT5EncoderModel

  torch.manual_seed(0)
  model = UMT5EncoderModel(UMT5Config(**UMT5, dropout_rate=0.0)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
      elif "relative_attention_bias" in name or "shared" in name:
        p.normal_(0.0, 1.0)
      else:
        p.normal_(0.0, 0.2)
  model.save_pretrained(folder)
  return model


def save_tokenizer(folder: Path, spm_folder: Path | None = None) -> Path:
  """A SentencePiece Unigram trained on SENTENCES, with T5's special ids, saved to folder by
  transformers' T5Tokenizer (tokenizer.json + tokenizer_config.json). spm_folder, when given,
  also keeps the bare spiece.model there."""
  import sentencepiece
  from transformers import T5Tokenizer

  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(SENTENCES * 20),
    model_writer=model,
    vocab_size=120,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    hard_vocab_limit=False,
    character_coverage=1.0,
    normalization_rule_name="nmt_nfkc",
    minloglevel=2,
  )
  spm_folder = spm_folder or folder.with_name(folder.name + "_spm")
  spm_folder.mkdir(parents=True, exist_ok=True)
  (spm_folder / "spiece.model").write_bytes(model.getvalue())
  T5Tokenizer.from_pretrained(spm_folder, extra_ids=8).save_pretrained(folder)
  return folder


def save_pipeline(root: Path) -> dict:
  """A diffusers-layout Wan 2.1 T2V folder whose parts fit together (the DiT reads the umT5's
  width and the VAE's latent channels); returns the torch models by component."""
  root.mkdir(parents=True, exist_ok=True)
  models = {
    "transformer": save_dit(
      root / "transformer",
      text_dim=UMT5["d_model"],
      in_channels=VAE["z_dim"],
      out_channels=VAE["z_dim"],
    ),
    "vae": save_vae(root / "vae"),
    "text_encoder": save_umt5(root / "text_encoder"),
  }
  save_tokenizer(root / "tokenizer")
  return models
