"""diffusers `WanTransformer3DModel` (Wan 2.1 text-to-video) config and weights into VideoDiT.

VideoDiT keeps Wan 2.1's original layout, so every diffusers tensor has exactly one counterpart;
only the names differ (condition_embedder.*, attn1/attn2, to_out.0, ffn.net.*, proj_out, and
diffusers' `norm2` being the cross-attention norm that Wan and we call `norm3`). MoGA's routers
do not exist in Wan: they keep their initialisation and are reported as such.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from moga_jax.errors import InputError
from moga_jax.model.dit import VideoDiT
from moga_jax.wan.weights import (
  Transform,
  WeightReport,
  conv_kernel,
  identity,
  known_config_keys,
  linear_kernel,
  load_tensors,
  read_safetensors,
)

# diffusers' defaults for keys a config.json may leave out.
_DEFAULTS: dict[str, Any] = {
  "patch_size": (1, 2, 2),
  "num_attention_heads": 40,
  "attention_head_dim": 128,
  "in_channels": 16,
  "out_channels": 16,
  "text_dim": 4096,
  "freq_dim": 256,
  "ffn_dim": 13824,
  "num_layers": 40,
  "cross_attn_norm": True,
  "qk_norm": "rms_norm_across_heads",
  "eps": 1e-6,
  "image_dim": None,
  "added_kv_proj_dim": None,
  "rope_max_seq_len": 1024,
  "pos_embed_seq_len": None,
}

# Keys that carry a model's widths; the rest of `_DEFAULTS` is fixed by Wan 2.1 T2V.
_WIDTH_KEYS = frozenset(
  {
    "patch_size",
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "out_channels",
    "text_dim",
    "freq_dim",
    "ffn_dim",
    "num_layers",
  }
)

# Keys whose non-default value means a model VideoDiT cannot represent, and why.
_UNSUPPORTED = {
  "image_dim": "image conditioning (I2V / FLF2V image embedder)",
  "added_kv_proj_dim": "image conditioning (I2V extra key/value projections)",
  "pos_embed_seq_len": "image conditioning (FLF2V image position embedding)",
}

# VideoDiT's norms (and MoGAAttention's q/k RMS norms) are built with epsilon 1e-6, as in Wan.
_EPS = 1e-6

# diffusers module -> (our module path, kind); kind decides how weight / bias map.
_TOP: dict[str, tuple[tuple[str | int, ...], str]] = {
  "patch_embedding": (("patch_embedding",), "conv"),
  "condition_embedder.time_embedder.linear_1": (("time_embedding", "layers", 0), "linear"),
  "condition_embedder.time_embedder.linear_2": (("time_embedding", "layers", 2), "linear"),
  "condition_embedder.time_proj": (("time_projection", "layers", 1), "linear"),
  "condition_embedder.text_embedder.linear_1": (("text_embedding", "layers", 0), "linear"),
  "condition_embedder.text_embedder.linear_2": (("text_embedding", "layers", 2), "linear"),
  "proj_out": (("head",), "linear"),
}

# Inside blocks.<i>: diffusers module -> (our module path, kind).
_BLOCK: dict[str, tuple[tuple[str, ...], str]] = {
  **{
    f"{ref}.{a}": ((ours, b), "linear")
    for ref, ours in (("attn1", "self_attn"), ("attn2", "cross_attn"))
    for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"))
  },
  **{
    f"{ref}.{n}": ((ours, n), "norm")
    for ref, ours in (("attn1", "self_attn"), ("attn2", "cross_attn"))
    for n in ("norm_q", "norm_k")
  },
  "norm2": (("norm3",), "norm"),  # the affine cross-attention input norm
  "ffn.net.0.proj": (("ffn", "fc1"), "linear"),
  "ffn.net.2": (("ffn", "fc2"), "linear"),
  # Not in Wan: MoGA's router, as `moga_jax.wan.export` writes it (our extension of the names).
  "attn1.router.proj": (("self_attn", "router", "proj"), "linear"),
}

_LEAVES: dict[tuple[str, str], tuple[str, Transform]] = {
  ("linear", "weight"): ("kernel", linear_kernel),
  ("linear", "bias"): ("bias", identity),
  ("conv", "weight"): ("kernel", conv_kernel),
  ("conv", "bias"): ("bias", identity),
  ("norm", "weight"): ("scale", identity),
  ("norm", "bias"): ("bias", identity),
}

_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)")


def diffusers_config_for(model) -> dict[str, Any]:
  """The WanTransformer3DModel config.json of a model section (the inverse of the reader below).

  Widths come from `model`; every other key is the Wan 2.1 T2V value VideoDiT computes with,
  the same `_DEFAULTS` that reading fills in.
  """
  fixed = {k: v for k, v in _DEFAULTS.items() if k not in _WIDTH_KEYS}
  return {
    "_class_name": "WanTransformer3DModel",
    **fixed,
    "patch_size": list(model.patch),
    "num_attention_heads": model.num_heads,
    "attention_head_dim": model.dim // model.num_heads,
    "in_channels": model.in_channels,
    "out_channels": model.in_channels,
    "text_dim": model.text_dim,
    "freq_dim": model.freq_dim,
    "ffn_dim": model.ffn_dim,
    "num_layers": model.num_layers,
  }


def dit_kwargs_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
  """diffusers transformer config.json (as a dict) -> VideoDiT keyword arguments.

  Add attention / dense_layers / scan_layers / remat / rngs yourself. Raises ValueError, naming
  the key, for anything VideoDiT would compute differently (image conditioning, other norms).
  """
  name = config.get("_class_name", "WanTransformer3DModel")
  if name != "WanTransformer3DModel":
    raise InputError(f"expected a WanTransformer3DModel config, got _class_name {name!r}")
  c = {**_DEFAULTS, **known_config_keys(config, _DEFAULTS, where="WanTransformer3DModel config")}
  for key, what in _UNSUPPORTED.items():
    if c[key] is not None:
      raise InputError(
        f"{key}={c[key]!r}: {what} is not supported; VideoDiT is text-to-video "
        "only (Wan 2.1 T2V), so load a T2V checkpoint"
      )
  if c["qk_norm"] != "rms_norm_across_heads":
    raise InputError(
      f"qk_norm={c['qk_norm']!r} is not supported: VideoDiT RMS-normalises q "
      "and k across all heads ('rms_norm_across_heads') as Wan 2.1 does"
    )
  if not c["cross_attn_norm"]:
    raise InputError(
      "cross_attn_norm=False is not supported: VideoDiT always applies the "
      "affine layer norm before cross-attention (norm3), as Wan 2.1 does"
    )
  if c["eps"] != _EPS:
    raise InputError(f"eps={c['eps']!r} is not supported: VideoDiT's norms use {_EPS}")
  patch = tuple(int(p) for p in c["patch_size"])
  if len(patch) != 3:
    raise InputError(f"patch_size must be (t, h, w), got {c['patch_size']!r}")
  heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
  # rope_max_seq_len only bounds diffusers' precomputed RoPE table; ours is computed per grid.
  return dict(
    in_channels=int(c["in_channels"]),
    out_channels=int(c["out_channels"] or c["in_channels"]),
    dim=heads * head_dim,
    ffn_dim=int(c["ffn_dim"]),
    num_layers=int(c["num_layers"]),
    num_heads=heads,
    text_dim=int(c["text_dim"]),
    patch=patch,
    freq_dim=int(c["freq_dim"]),
  )


def dit_rename(name: str) -> tuple[tuple[str | int, ...], Transform] | None:
  """diffusers WanTransformer3DModel tensor name -> (VideoDiT parameter path, transform)."""
  if name == "scale_shift_table":
    return ("head_modulation",), identity
  match = _BLOCK_NAME.fullmatch(name)
  if match is not None:
    index, rest = int(match.group(1)), match.group(2)
    if rest == "scale_shift_table":
      return ("blocks", index, "modulation"), identity
    module, _, leaf = rest.rpartition(".")
    target = _BLOCK.get(module)
    prefix: tuple[str | int, ...] = ("blocks", index)
  else:
    module, _, leaf = name.rpartition(".")
    target = _TOP.get(module)
    prefix = ()
  if target is None or (target[1], leaf) not in _LEAVES:
    return None
  path, kind = target
  ours, transform = _LEAVES[kind, leaf]
  return (*prefix, *path, ours), transform


_INVERSE: dict[Transform, Transform] = {
  identity: identity,
  linear_kernel: lambda x: x.T,
  conv_kernel: lambda x: np.transpose(x, (x.ndim - 1, x.ndim - 2, *range(x.ndim - 2))),
}


def diffusers_names(num_layers: int) -> list[str]:
  """Every tensor name a WanTransformer3DModel of `num_layers` blocks can hold (Wan's, plus
  MoGA's routers)."""
  leaves = lambda kind: [leaf for k, leaf in _LEAVES if k == kind]
  names = ["scale_shift_table"]
  names += [f"{module}.{leaf}" for module, (_, kind) in _TOP.items() for leaf in leaves(kind)]
  for i in range(num_layers):
    names.append(f"blocks.{i}.scale_shift_table")
    names += [
      f"blocks.{i}.{module}.{leaf}" for module, (_, kind) in _BLOCK.items() for leaf in leaves(kind)
    ]
  return names


def dit_to_diffusers(dit: VideoDiT) -> dict[str, np.ndarray]:
  """VideoDiT parameters -> diffusers WanTransformer3DModel tensors (routers included under
  `blocks.<i>.attn1.router.proj.*`); the inverse of `load_wan_dit`."""
  flat = {
    tuple(map(str, path)): np.asarray(var[...])
    for path, var in nnx.to_flat_state(nnx.state(dit, nnx.Param))
  }
  if dit.scan_layers:  # [layers, ...] -> one tensor per block
    num_layers = next(x.shape[0] for p, x in flat.items() if p[0] == "blocks")
    flat = {
      **{p: x for p, x in flat.items() if p[0] != "blocks"},
      **{
        ("blocks", str(i), *p[1:]): x[i]
        for p, x in flat.items()
        if p[0] == "blocks"
        for i in range(num_layers)
      },
    }
  else:
    num_layers = len(dit.blocks)
  tensors, used = {}, set()
  for name in diffusers_names(num_layers):
    path, transform = dit_rename(name)
    path = tuple(map(str, path))
    if path in flat:
      tensors[name] = np.ascontiguousarray(_INVERSE[transform](flat[path]))
      used.add(path)
  left = sorted(".".join(p) for p in set(flat) - used)
  if left:
    raise ValueError(f"no diffusers name for these parameters: {left}")
  return tensors


def _is_router(name: str) -> bool:
  return ".self_attn.router." in f".{name}"


def _per_layer(transform: Transform) -> Transform:
  return lambda x: np.stack([transform(layer) for layer in x])


def _scanned_rename(name: str) -> tuple[tuple[str | int, ...], Transform] | None:
  """Like dit_rename, for `blocks.*.<rest>` tensors stacked over layers (scan_layers)."""
  if not name.startswith("blocks.*."):
    return dit_rename(name)
  target = dit_rename(name.replace("*", "0", 1))
  if target is None:
    return None
  (_, _, *path), transform = target
  return ("blocks", *path), _per_layer(transform)


def _stack_blocks(tensors: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
  """Stacks blocks.<i>.<rest> over i into blocks.*.<rest>, for a VideoDiT with scanned blocks.

  A <rest> that is not present once per layer with one shape stays per layer: its tensors then
  come back unexpected and its parameter missing, by name.
  """
  out: dict[str, np.ndarray] = {}
  layers: dict[str, dict[int, np.ndarray]] = {}
  for name, x in tensors.items():
    match = _BLOCK_NAME.fullmatch(name)
    if match is None:
      out[name] = x
    else:
      layers.setdefault(match.group(2), {})[int(match.group(1))] = x
  for rest, per in layers.items():
    if sorted(per) == list(range(num_layers)) and len({x.shape for x in per.values()}) == 1:
      out[f"blocks.*.{rest}"] = np.stack([per[i] for i in range(num_layers)])
    else:
      out.update({f"blocks.{i}.{rest}": x for i, x in per.items()})
  return out


def load_wan_dit(src: str | os.PathLike, dit: VideoDiT, *, strict: bool = True) -> WeightReport:
  """Fills `dit` in place from a diffusers transformer .safetensors file or folder of shards.

  Build `dit` as `VideoDiT(**dit_kwargs_from_diffusers(config), attention=..., rngs=...)`; with
  scan_layers the per-layer tensors are stacked first. MoGA router weights are absent from Wan
  and reported as initialised. Anything missing, unexpected or mis-shaped raises, naming the
  tensors (strict=False returns the report instead; `dit` is then left untouched).
  """
  tensors, rename = read_safetensors(src), dit_rename
  if dit.scan_layers:
    num_layers = jax.tree.leaves(nnx.state(dit.blocks, nnx.Param))[0].shape[0]
    tensors, rename = _stack_blocks(tensors, num_layers), _scanned_rename
  report = load_tensors(dit, tensors, rename, initialise=_is_router)
  if strict:
    report.raise_if_incomplete(f"Wan DiT from {src}")
  return report
