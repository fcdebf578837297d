"""Reading pretrained tensors (safetensors only) and loading them into NNX modules by name.

Every converter (Wan DiT, Wan VAE, umT5) is a `rename` function from a reference tensor name to
(our parameter path, transform). `load_tensors` applies it, checks every shape, and returns a
`WeightReport` listing what was missing, unexpected or mis-shaped, by name: nothing is dropped
silently. The reader is our own (the format is an 8-byte header length, a JSON header and raw
little-endian bytes), so that bfloat16 tensors load through ml_dtypes and large files are
memory-mapped instead of read whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import logging
from flax import nnx

from moga_jax.errors import InputError, MissingInputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}

# A rename maps a reference tensor name to (our parameter path, transform), or None when the
# tensor has no counterpart here (it is then reported as unexpected).
Transform = Callable[[np.ndarray], np.ndarray]
Rename = Callable[[str], "tuple[tuple[str | int, ...], Transform] | None"]


def identity(x: np.ndarray) -> np.ndarray:
  return x


def linear_kernel(x: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> nnx.Linear kernel [in, out]."""
  return x.T


def conv_kernel(x: np.ndarray) -> np.ndarray:
  """torch ConvNd weight [out, in, *spatial] -> nnx.Conv kernel [*spatial, in, out]."""
  return np.transpose(x, (*range(2, x.ndim), 1, 0))


def refuse_pickle(path: str | os.PathLike) -> None:
  """Pickle-based checkpoints can run arbitrary code when loaded: we never open them."""
  path = Path(path)
  if path.suffix.lower() in PICKLE_SUFFIXES:
    raise InputError(
      f"{path} is a pickle-based checkpoint ({path.suffix}); loading one can execute arbitrary "
      "code, so moga-jax reads safetensors only. Convert it to .safetensors first (for "
      "example with diffusers' save_pretrained(..., safe_serialization=True))."
    )


def safetensor_files(src: str | os.PathLike) -> list[Path]:
  """The .safetensors files of a file or folder (shards sorted by name); refuses pickles."""
  src = Path(src)
  if not src.exists():
    raise MissingInputError(f"no such file or folder: {src}")
  if src.is_file():
    refuse_pickle(src)
    if src.suffix != ".safetensors":
      raise InputError(f"{src} is not a .safetensors file")
    return [src]
  files = sorted(src.glob("*.safetensors"))
  if not files:
    pickles = sorted(p.name for p in src.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
      refuse_pickle(src / pickles[0])
    raise MissingInputError(f"no .safetensors files in {src}")
  return files


def config_beside(src: str | os.PathLike) -> Path:
  """The config.json in the folder of src (a weights file or a folder of shards)."""
  src = Path(src)
  folder = src if src.is_dir() else src.parent
  if not (folder / "config.json").is_file():
    raise MissingInputError(f"no config.json in {folder}: pass config= explicitly")
  return folder / "config.json"


def read_config_json(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
  """(path, contents) of a config.json, given the file or the folder holding one."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  with open(path, encoding="utf-8") as f:
    return path, json.load(f)


def known_config_keys(
  raw: Mapping[str, Any],
  known: Iterable[str],
  *,
  where: str,
  ignore: Iterable[str] = (),
  unknown: str = "raise",
) -> dict[str, Any]:
  """The one unknown-key policy of every converter's config reader. Keys starting with "_"
  (class name, library version) are metadata; keys in `ignore` are the exporting library's
  own settings that do not change what the ported model computes. Any other key the port
  does not know raises a ValueError naming it (unknown="raise": diffusers configs, whose keys
  are the model's constructor arguments, so a new key is a new behaviour), or is named in a
  warning (unknown="warn": transformers configs, which carry generic and decoder settings that
  change from release to release; the keys that could change the encoder are checked by the
  caller). Returns the known keys."""
  if unknown not in ("raise", "warn"):
    raise ValueError(f"unknown must be 'raise' or 'warn', got {unknown!r}")
  known, ignore = set(known), set(ignore)
  extra = sorted(k for k in raw if not k.startswith("_") and k not in known | ignore)
  if extra and unknown == "raise":
    raise InputError(
      f"{where}: unsupported config keys {extra}; refusing rather than guessing what they "
      f"change (this port reads {sorted(known)})"
    )
  if extra:
    logging.warning("%s: ignoring config keys this port does not read: %s", where, extra)
  return {k: v for k, v in raw.items() if k in known}


def read_safetensors(src: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file or of every shard in a folder, memory-mapped."""
  tensors: dict[str, np.ndarray] = {}
  for path in safetensor_files(src):
    with path.open("rb") as f:
      header_len = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    for name, info in header.items():
      if name == "__metadata__":
        continue
      if info["dtype"] not in _DTYPES:
        raise InputError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
      if name in tensors:
        raise InputError(f"tensor {name!r} appears in more than one shard of {src}")
      start, end = info["data_offsets"]
      dtype = np.dtype(_DTYPES[info["dtype"]])
      tensors[name] = data[start:end].view(dtype).reshape(info["shape"])
  return tensors


def write_safetensors(
  path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> Path:
  """Writes tensors as one .safetensors file (little-endian, names sorted), atomically."""
  names = {np.dtype(v): k for k, v in _DTYPES.items()}
  header: dict = {"__metadata__": metadata} if metadata else {}
  offset, blobs = 0, []
  for name in sorted(tensors):
    x = np.ascontiguousarray(tensors[name])
    if x.dtype not in names:
      raise ValueError(f"tensor {name!r}: dtype {x.dtype} has no safetensors name")
    blob = x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {
      "dtype": names[x.dtype],
      "shape": list(x.shape),
      "data_offsets": [offset, offset + len(blob)],
    }
    offset += len(blob)
    blobs.append(blob)
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
  path = Path(path)
  partial = path.with_name(path.name + ".partial")
  with partial.open("wb") as f:
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for blob in blobs:
      f.write(blob)
  partial.replace(path)
  return path


@dataclasses.dataclass
class WeightReport:
  """What loading found. Names are the reference's for unexpected, ours for the rest."""

  loaded: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  mismatched: list[str] = dataclasses.field(default_factory=list)
  initialised: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def describe(self, what: str) -> str:
    lines = [f"{what}: {len(self.loaded)} tensors loaded"]
    for label, names in (
      ("missing (no tensor for these parameters)", self.missing),
      ("unexpected (tensors with no parameter here)", self.unexpected),
      ("mis-shaped", self.mismatched),
      ("not in the source, initialised as the config says", self.initialised),
    ):
      if names:
        lines.append(f"  {label}: {len(names)}")
        lines.extend(f"    {n}" for n in names)
    return "\n".join(lines)

  def raise_if_incomplete(self, what: str) -> None:
    if not self.ok:
      raise InputError(self.describe(what))


def _path_name(path: Iterable) -> str:
  return ".".join(str(p) for p in path)


def load_tensors(
  module: nnx.Module,
  tensors: dict[str, np.ndarray],
  rename: Rename,
  *,
  initialise: Callable[[str], bool] = lambda name: False,
) -> WeightReport:
  """Copies `tensors` into `module`'s nnx.Params in place, through `rename`.

  initialise(name) marks parameters the source cannot have (e.g. MoGA's router): they keep their
  initial values and are reported as initialised rather than missing. The module is updated
  only when nothing is missing, unexpected or mis-shaped; the report says what went wrong.
  """
  state = nnx.state(module, nnx.Param)
  params = {_path_name(path): var for path, var in nnx.to_flat_state(state)}
  report, updates = WeightReport(), {}
  for name in sorted(tensors):
    target = rename(name)
    if target is None or _path_name(target[0]) not in params:
      report.unexpected.append(name)
      continue
    path, transform = target
    key = _path_name(path)
    if key in updates:
      raise ValueError(f"two source tensors map to parameter {key} (second: {name!r})")
    value = transform(np.asarray(tensors[name]))
    want = params[key]
    if tuple(value.shape) != tuple(want.shape):
      report.mismatched.append(
        f"{key}: ours {tuple(want.shape)}, {name!r} gives {tuple(value.shape)}"
      )
      continue
    updates[key] = jnp.asarray(value, dtype=want.dtype)
    report.loaded.append(key)
  for key in sorted(params):
    if key not in updates:
      (report.initialised if initialise(key) else report.missing).append(key)
  if report.ok:
    for path, var in nnx.to_flat_state(state):
      key = _path_name(path)
      if key in updates:
        var.set_value(updates[key])
    nnx.update(module, state)
  return report
