"""Wan weights by Hugging Face Hub id: `convert_wan --src Wan-AI/Wan2.1-T2V-1.3B-Diffusers`.

An `owner/name` that is not a local path resolves through `huggingface_hub.snapshot_download`
(the `wan` extra), fetching only the files the converter reads for the requested components
(`allow_patterns`: their config.json and .safetensors files, the tokenizer's JSON files; never
the PyTorch pickles beside them). huggingface_hub's own settings apply: the cache under HF_HOME
(or HF_HUB_CACHE), HF_HUB_OFFLINE=1 to use the cache only, HF_TOKEN for gated repos. Offline with
the id not cached is one line saying what to do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from moga_jax.errors import MissingInputError
from moga_jax.wan.converted_folder import TOKENIZER_FILES

# owner/name as the Hub spells repo ids (letters, digits, '-', '_', '.'); a local path wins.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# A transformer on its own (config.json + diffusion_pytorch_model*.safetensors at the top).
_TOP_LEVEL = ("model_index.json", "config.json", "diffusion_pytorch_model*.safetensors*")


def is_hub_id(src: str | Path) -> bool:
  """An `owner/name` string that names no existing local path."""
  return bool(HUB_ID.match(str(src))) and not Path(src).exists()


def hub_patterns(components: Sequence[str]) -> list[str]:
  """`allow_patterns` for the files the converter reads for `components` (fnmatch: `*` also
  matches `/`, so every pattern is anchored to its folder)."""
  patterns = list(_TOP_LEVEL)
  for name in components:
    if name == "tokenizer":
      patterns += [f"tokenizer/{file}" for file in TOKENIZER_FILES]
    else:
      patterns += [f"{name}/*.json", f"{name}/*.safetensors"]
  return patterns


def resolve_source(src: str | Path, components: Sequence[str]) -> Path:
  """A local folder as given; a Hub id as its snapshot folder in the Hugging Face cache
  (downloaded unless cached or offline). MissingInputError, one line, when it cannot be had."""
  if not is_hub_id(src):
    return Path(src)
  try:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
  except ImportError as e:  # the command line names the `wan` extra (moga_jax.cli)
    raise ImportError(f"--src {src} is a Hub id: {e}", name="huggingface_hub") from e
  try:
    folder = snapshot_download(str(src), allow_patterns=hub_patterns(components))
  except LocalEntryNotFoundError:
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
    raise MissingInputError(
      f"--src {src}: no such local folder, and the Hugging Face cache ({constants.HF_HUB_CACHE}) "
      f"has no copy of it while {why}: download it where there is a network (`hf download "
      f"{src}`) into that cache (set HF_HOME to share one), or give a local folder"
    ) from None
  except RepositoryNotFoundError:
    raise MissingInputError(
      f"--src {src}: no such local folder, and no such model on the Hugging Face Hub (a "
      "private or gated one needs HF_TOKEN or `hf auth login`)"
    ) from None
  return Path(folder)
