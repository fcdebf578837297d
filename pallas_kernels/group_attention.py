"""`group_attention`: exact attention inside routed groups, the core operation of MoGA."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from pallas_kernels import validation
from pallas_kernels.block_sparse.dispatch import resolve
from pallas_kernels.block_sparse.layout_ops import AttentionPattern, attend_pattern
from pallas_kernels.block_sparse.options import KernelOptions
from pallas_kernels.block_sparse.reference import group_attention_reference
from pallas_kernels.common import cdiv
from pallas_kernels.metadata import WorkShare, group_layout


def group_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  group_ids: jax.Array,
  *,
  num_groups: int,
  scale: float | None = None,
  implementation: str | None = None,
  interpret: bool | None = None,
  tile: int | None = None,
  backend: str | None = None,
  options: KernelOptions | Mapping | None = None,
  share: WorkShare | tuple | None = None,
  check_ids: bool = False,
) -> jax.Array:
  """Full attention inside each group of tokens; tokens of other groups are never visited.

  out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h]) v[b, j, h], the softmax taken
  over the tokens j with group_ids[b, j, h] == group_ids[b, i, h]. Every token is kept whatever
  the group sizes: one group holding all tokens, empty groups and singletons are all legal.

  Args:
    q, k, v: [batch, seq, heads, head_dim], one floating dtype. Accumulation is float32.
    group_ids: integer [batch, seq, heads] (per-head routing) or [batch, seq] (shared by the
      heads), values in [0, num_groups).
    num_groups: number of groups G.
    scale: score scale; defaults to 1 / sqrt(head_dim).
    implementation: None (best available for the backend, falling back to "xla"; the dense
      masked "reference" for sequences of at most 512 tokens), "xla", "reference",
      "pallas_tpu" or "pallas_gpu". A named one that cannot run raises ValueError.
    interpret: Pallas interpret mode (None: interpret exactly when running on CPU). For
      "pallas_tpu" it may also be a `pltpu.InterpretParams` (the TPU simulator, stricter and
      slower). Ignored by "xla" and "reference".
    tile: tokens per tile of the sorted layout (default 128, or the sequence length rounded up
      to 8 when that is shorter; compiled "pallas_gpu" takes the largest power of two that fits
      its shared memory: 64 for float32 at head_dim 128). Each group is padded up to whole
      tiles, so the cost is sum_g ceil(n_g / tile)^2 tile pairs.
    backend: the platform to compile for ("cpu", "gpu" or "tpu"). None: the platform of q's
      devices where q says (a concrete array, or under `jit(...).lower(...)` an input placed on
      compile-only TPU devices, JAX >= 0.11), else `jax.default_backend()`. Set it to lower the
      real TPU or GPU kernels from a CPU host (ahead-of-time compilation).
    options: a `KernelOptions` (or a mapping of its fields): xla chunk size, Triton warps and
      stages; interpret= is a shorthand for options.interpret.
    share: a `WorkShare(index, count)`: compute only the groups of share `index` (group g
      belongs to share g * count // num_groups) and return 0 for the other tokens, so that
      the `count` shares add up to the whole (context parallelism past the head count: see
      moga_jax.parallel.sequence_parallel). index may be traced. None: every group.
    check_ids: traced group_ids (under jit) cannot be range-checked here, and out-of-range
      ones are clipped into [0, num_groups). True adds a `jax.experimental.checkify` check
      on them: wrap the caller in `checkify.checkify(f)` and `err.throw()` raises naming the
      values (without the wrapper jit refuses the unfunctionalized check). Concrete ids are
      always checked.

  Returns:
    [batch, seq, heads, head_dim] in q.dtype. Differentiable in q, k and v.
  """
  batch, seq, heads, head_dim = validation.check_qkv(q, k, v)
  num_groups = validation.check_positive_int("num_groups", num_groups)
  group_ids = validation.check_group_ids(
    group_ids, batch=batch, seq=seq, heads=heads, num_groups=num_groups, check_ids=check_ids
  )
  scale = validation.check_scale(scale, head_dim)
  share = validation.check_share(share)
  resolved = resolve(
    implementation, x=q, tile=tile, interpret=interpret, backend=backend, options=options
  )
  return attend_pattern(
    Groups(num_groups), q, k, v, group_ids, scale=scale, resolved=resolved, share=share
  )


@dataclasses.dataclass(frozen=True)
class Groups(AttentionPattern):
  """Tokens sorted by group id, each group padded to whole tiles: a tile visits its group's run.
  A share owns whole groups (group g is share g * count // num_groups's), keys included."""

  num_groups: int
  name = "group"
  share_owns_keys = True

  def layout(self, group_ids, *, tile, share):
    rows = jnp.moveaxis(group_ids, -1, 1).reshape(-1, group_ids.shape[1])  # [B * Hr, N]
    return group_layout(rows, num_groups=self.num_groups, tile=tile, share=share)

  def reference(self, q, k, v, group_ids, *, scale):
    return group_attention_reference(q, k, v, group_ids, scale=scale)

  def owned(self, share, group_ids, *, seq, tile):
    return share.owns_group(group_ids, self.num_groups)[..., None]  # [B, N, H or 1, 1]

  def visits_per_row(self, *, seq, tile):
    """Uniform routing: G groups of N / G tokens, each visiting its own tiles squared."""
    tiles_per_group = cdiv(cdiv(seq, self.num_groups), tile)
    return self.num_groups * tiles_per_group**2
