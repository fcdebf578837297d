"""umT5 prompt tokenization as Wan's diffusers pipeline does it, on the `tokenizers` package alone.

The pipeline cleans each prompt (HTML unescape, whitespace collapse), then calls the HF tokenizer
with padding="max_length", truncation=True and special tokens on: text is cut so that the EOS
the post-processor appends still fits, and the rest is right-padded with the pad id (0).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, processors

from moga_jax.errors import InputError, MissingInputError

_T5_CLASSES = ("T5Tokenizer", "T5TokenizerFast")


@dataclasses.dataclass(frozen=True)
class PromptTokenizer:
  backend: Tokenizer
  pad_id: int


def _token_text(value: object) -> str | None:
  """tokenizer_config.json stores special tokens as strings or as AddedToken dicts."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def load_tokenizer(path: str | os.PathLike) -> PromptTokenizer:
  """Loads a diffusers-layout `tokenizer/` folder (or a tokenizer.json file)."""
  path = Path(path)
  folder = path.parent if path.is_file() else path
  file = path if path.is_file() else folder / "tokenizer.json"
  if not file.is_file():
    hint = " (it holds spiece.model only)" if (folder / "spiece.model").is_file() else ""
    raise MissingInputError(
      f"no tokenizer.json in {folder}{hint}. moga-jax reads the `tokenizers` serialization, "
      "not SentencePiece models. Write it once with transformers: "
      f"AutoTokenizer.from_pretrained({str(folder)!r}).save_pretrained({str(folder)!r})"
    )
  backend = Tokenizer.from_file(str(file))
  settings = {}
  if (folder / "tokenizer_config.json").is_file():
    settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
  for side in ("padding_side", "truncation_side"):
    if settings.get(side, "right") != "right":
      raise InputError(
        f"{folder}: {side}={settings[side]!r}; Wan's pipeline trims embeddings "
        "assuming right padding and truncation, the only kind supported here"
      )
  pad = _token_text(settings.get("pad_token")) or "<pad>"
  pad_id = backend.token_to_id(pad)
  if pad_id is None:
    raise InputError(f"{file}: the pad token {pad!r} is not in the vocabulary")
  eos = _token_text(settings.get("eos_token")) or "</s>"
  t5_class = settings.get("tokenizer_class", "T5Tokenizer") in _T5_CLASSES
  if backend.post_processor is None and t5_class:
    # transformers' T5 tokenizers always append EOS; a bare tokenizer.json may not say so.
    eos_id = backend.token_to_id(eos)
    if eos_id is None:
      raise InputError(f"{file}: the EOS token {eos!r} is not in the vocabulary")
    backend.post_processor = processors.TemplateProcessing(
      single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
    )
  return PromptTokenizer(backend, pad_id)


def clean_prompt(text: str) -> str:
  """diffusers' Wan prompt_clean: ftfy when installed (as there), HTML unescape, one space."""
  try:
    import ftfy  # optional, as in diffusers
  except ImportError:
    pass
  else:
    text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


def encode_prompts(
  tokenizer: PromptTokenizer,
  prompts: str | Sequence[str],
  max_len: int = 512,
  *,
  clean: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """-> (ids int32 [B, max_len], mask bool [B, max_len]), EOS-terminated and right-padded.

  numpy arrays, host side. Sets the backend's truncation to max_len (not thread-safe).
  """
  if max_len < 1:
    raise ValueError(f"max_len must be positive, got {max_len}")
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if clean:
    prompts = [clean_prompt(p) for p in prompts]
  backend = tokenizer.backend
  # The library truncation leaves room for the special tokens the post-processor adds.
  backend.enable_truncation(max_len, strategy="longest_first", direction="right")
  backend.no_padding()
  encodings = backend.encode_batch(prompts, add_special_tokens=True)
  ids = np.full((len(prompts), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(prompts), max_len), bool)
  for row, encoding in enumerate(encodings):
    ids[row, : len(encoding.ids)] = encoding.ids
    mask[row, : len(encoding.ids)] = True
  return ids, mask
