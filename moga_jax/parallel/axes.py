"""The names of the mesh's axes and of the model's logical axes, as constants (no jax import:
config files use them too).

Code names what an axis *is* with a logical name; the config's sharding rules
(configs/parallelism.py) map each logical name to the mesh axes that carry it, so one model
runs on any mesh. A name outside LOGICAL_AXES is refused where rules are made or looked up
(moga_jax.parallel.sharding.ShardingRules), never silently replicated.
"""

from __future__ import annotations

# Mesh axes: batches over data x fsdp, parameters over fsdp, sequences over context x share
# between attention blocks (inside attention, context splits the heads and share the work),
# heads and FFN width over tensor.
DATA = "data"
FSDP = "fsdp"
CONTEXT = "context"
SHARE = "share"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, CONTEXT, SHARE, TENSOR)

# Logical axes of activations: a [batch, length, embed] hidden state, attention
# [batch, length, heads, head_dim], the FFN's [batch, length, mlp].
ACTIVATION_BATCH = "activation_batch"
ACTIVATION_LENGTH = "activation_length"
ACTIVATION_HEADS = "activation_heads"
ACTIVATION_EMBED = "activation_embed"
ACTIVATION_MLP = "activation_mlp"
# Logical axes of parameters (and of the optimizer state shaped like them): the model width,
# the attention's inner width, the FFN's width.
EMBED = "embed"
HEADS = "heads"
MLP = "mlp"

LOGICAL_AXES = (
  ACTIVATION_BATCH,
  ACTIVATION_LENGTH,
  ACTIVATION_HEADS,
  ACTIVATION_EMBED,
  ACTIVATION_MLP,
  EMBED,
  HEADS,
  MLP,
)
