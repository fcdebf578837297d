"""Mesh, logical sharding rules and multi-host settings shared by every config.

Axes ('data', 'fsdp', 'context', 'share', 'tensor'); one size may be -1 (all devices left). The
rules map the model's logical axis names (see `moga_jax.parallel.axes`) to
mesh axes: batches over data x fsdp, sequences over context x share between attention blocks,
heads and FFN width over tensor, parameters and optimizer state over fsdp x context x share. Inside
attention, heads are split over context too (Ulysses), so num_heads must be divisible by
context x tensor; `share` goes past that limit: its devices hold the same heads' whole
sequences and split the attention's work by units (MoGA's groups, STGA's windows, frames).
"""

from ml_collections import ConfigDict

from moga_jax.parallel import axes

RULES = (
  (axes.ACTIVATION_BATCH, (axes.DATA, axes.FSDP)),
  (axes.ACTIVATION_LENGTH, (axes.CONTEXT, axes.SHARE)),
  (axes.ACTIVATION_HEADS, axes.TENSOR),
  (axes.ACTIVATION_EMBED, None),
  (axes.ACTIVATION_MLP, axes.TENSOR),
  # Parameters are split over the sequence axis too (ZeRO-3 style): context devices hold
  # different tokens but the same weights, so gathering weights there costs no extra memory.
  (axes.EMBED, (axes.FSDP, axes.CONTEXT, axes.SHARE)),
  (axes.HEADS, axes.TENSOR),
  (axes.MLP, axes.TENSOR),
)


def sharding(
  *,
  data: int = -1,
  fsdp: int = 1,
  context: int = 1,
  share: int = 1,
  tensor: int = 1,
  tpu_slice: str = "",
) -> ConfigDict:
  """tpu_slice: the TPU slice this mesh is laid out for ("v5e-8"; v5p slices count cores, so
  "v5p-64" is 32 chips), which `python -m moga_jax.tools.plan --aot --aot_tpu CHIP` compiles for;
  "" for none."""
  c = ConfigDict()
  c.mesh = ConfigDict(
    {
      axes.DATA: data,
      axes.FSDP: fsdp,
      axes.CONTEXT: context,
      axes.SHARE: share,
      axes.TENSOR: tensor,
    }
  )
  c.rules = RULES
  c.tpu_slice = tpu_slice
  return c


def distributed() -> ConfigDict:
  """jax.distributed.initialize() runs when `initialize` is True or JAX_COORDINATOR_ADDRESS is
  set; empty / 0 fields let JAX detect them (TPU pods, SLURM, ...)."""
  c = ConfigDict()
  c.initialize = False
  c.coordinator_address = ""
  c.num_processes = 0
  c.process_id = -1
  return c
