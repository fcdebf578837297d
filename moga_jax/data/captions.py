"""Shot captions stored as fixed-size, zero-padded UTF-8 byte rows (uint8 [max_shots, L]).

Raw bytes keep the dataset independent of any tokenizer: a byte-level model reads them directly
and a tokenizer can be applied later, after decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moga_jax.errors import InputError

__all__ = ["decode_captions", "encode_captions"]


def encode_captions(captions: Sequence[str], *, rows: int, length: int) -> np.ndarray:
  """uint8 [rows, length]: one caption per row, truncated on a character boundary, zero padded.

  Truncation never splits a multi-byte UTF-8 character, so every row decodes cleanly.
  """
  if isinstance(captions, str):
    raise TypeError("captions must be a sequence of str, got a single str")
  if len(captions) > rows:
    raise InputError(f"captions has {len(captions)} entries but only rows={rows} fit")
  out = np.zeros((rows, length), np.uint8)
  for row, text in enumerate(captions):
    if not isinstance(text, str):
      raise TypeError(f"captions[{row}] must be str, got {type(text).__name__}")
    data = text.encode("utf-8")[:length].decode("utf-8", errors="ignore").encode("utf-8")
    if b"\0" in data:
      raise InputError(f"captions[{row}] contains a NUL character, which is the padding byte")
    out[row, : len(data)] = np.frombuffer(data, np.uint8)
  return out


def decode_captions(captions, num_shots: int | None = None) -> list[str]:
  """Inverse of encode_captions for one example: uint8 [S, L] -> the first num_shots strings."""
  captions = np.asarray(captions)
  if captions.dtype != np.uint8 or captions.ndim != 2:
    raise ValueError(f"captions must be uint8 [S, L], got {captions.dtype} {captions.shape}")
  count = captions.shape[0] if num_shots is None else int(num_shots)
  if not 0 <= count <= captions.shape[0]:
    raise ValueError(f"num_shots must be in [0, {captions.shape[0]}], got {num_shots}")
  return [row.tobytes().rstrip(b"\0").decode("utf-8") for row in captions[:count]]
