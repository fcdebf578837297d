"""Rematerialisation policies for the DiT's blocks: what the backward pass keeps of a block.

A training step at 62K-563K tokens is bounded by what the backward pass holds, not by the
weights (see docs/tpu_fit.md). Each block runs under `jax.checkpoint` with one of these named
policies (`config.model.remat`), as MaxText's `remat_policy` does:

  "none"                   no checkpoint: every intermediate of every block stays live
  "full"                   only the block inputs (the carried residual stream) stay live
  "save_qkv"               also the projected, RoPE-rotated q, k, v: the backward pass skips
                           the projections' recompute
  "save_attention"         also each attention kernel's output (`ATTENTION_OUT_NAME`)
  "offload_block_input"    "full", with the block inputs moved to pinned host memory between
                           the forward and the backward pass (the largest saved tensor:
                           layers x tokens x dim float32 per chip); on backends without
                           host memory spaces (CPU) it behaves as "full"

Under any policy but "none" each attention branch and each chunk of the FFN is a nested
checkpoint of its own (`MoGAAttention(checkpoint_branches=True)`, `FeedForward(token_chunk=)`),
so recomputing a block's backward holds one branch's packed layout or one FFN chunk's
intermediates at a time.
"""

from __future__ import annotations

import jax
from jax.ad_checkpoint import checkpoint_name

from pallas_kernels.block_sparse.layout_ops import ATTENTION_OUT_NAME

# checkpoint_name tags the model puts on the tensors the policies name.
BLOCK_INPUT_NAME = "dit_block_input"
QKV_NAME = "attention_qkv"

REMAT_POLICIES = ("none", "full", "save_qkv", "save_attention", "offload_block_input")


def normalise_remat(remat: bool | str) -> str:
  """The policy name of a `remat` setting: True is "full" and False "none" (the settings'
  earlier boolean form); a string must be one of REMAT_POLICIES."""
  if isinstance(remat, bool):
    return "full" if remat else "none"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be a bool or one of {REMAT_POLICIES}, got {remat!r}")
  return remat


def checkpoint_policy(remat: str):
  """The `jax.checkpoint` policy of a policy name (None for "none": no checkpoint)."""
  p = jax.checkpoint_policies
  remat = normalise_remat(remat)
  if remat == "none":
    return None
  if remat == "full":
    return p.nothing_saveable
  if remat == "save_qkv":
    return p.save_only_these_names(QKV_NAME)
  if remat == "save_attention":
    return p.save_only_these_names(QKV_NAME, ATTENTION_OUT_NAME)
  if _has_host_memory():
    return p.save_and_offload_only_these_names(
      names_which_can_be_saved=[],
      names_which_can_be_offloaded=[BLOCK_INPUT_NAME],
      offload_src="device",
      offload_dst="pinned_host",
    )
  return p.nothing_saveable


def _has_host_memory() -> bool:
  """Whether the mesh being traced for (else the default device) has a pinned-host memory
  space to offload to: TPUs and GPUs do, the CPU backend does not."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  platform = device.platform if device is not None else jax.default_backend()
  return platform in ("tpu", "gpu", "cuda", "rocm")


def tag_block_input(x: jax.Array) -> jax.Array:
  return checkpoint_name(x, BLOCK_INPUT_NAME)


def tag_qkv(x: jax.Array) -> jax.Array:
  return checkpoint_name(x, QKV_NAME)
