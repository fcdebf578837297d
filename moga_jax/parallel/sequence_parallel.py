"""Sequence parallelism for attention: Ulysses (whole sequences for a slice of the heads) and,
past the head count, work shares (each device of a group computes some of the units), inside
shard_map.

Between blocks a hidden state is split along the sequence over the 'context' x 'share' mesh
axes. MoGA's routing, the group sort and the kernels need every token of a head on one device:
- Ulysses ('context', c devices): an all-to-all trades the sequence split for a head split
  ([B, N/c, H, D] -> [B, N, H/c, D] per device), attention runs locally, and a second all-to-all
  goes back. Heads are independent, so the result is exact; c must divide the head count.
- Work shares ('share', s devices), past that limit: the s devices first all-gather their
  sequence pieces (then Ulysses as above), so each holds the whole sequence of the same H/c
  heads; each computes only its share of the attention's independent units (MoGA's groups,
  STGA's windows, frames: `pallas_kernels.metadata.WorkShare`), 0 elsewhere, and a
  reduce-scatter over 'share' sums the shares and hands each device its own tokens back. Exact:
  every query is computed once, no token is dropped whatever the group sizes. Per device the
  attention holds what Ulysses at c holds ([B, N, H/c, D] per tensor), while everything between
  attention (hidden states, FFN, norms, the saved block inputs) is split c x s ways. Cost per
  layer: all-gathers of q, k, v and a reduce-scatter of the output over 'share' (each
  (s - 1) / s x [B, N/c, H, D]); the shares' balance follows the units' (even for STGA windows
  and frames; MoGA's groups as balanced as the balancing loss keeps them). See docs/tpu_fit.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moga_jax.parallel.axes import ACTIVATION_BATCH, ACTIVATION_HEADS, ACTIVATION_LENGTH
from moga_jax.parallel.sharding import SHARE_AXIS, ShardingRules, constrain, spec_entry
from pallas_kernels.common import cdiv
from pallas_kernels.metadata import WorkShare


def ulysses(
  fn: Callable[..., jax.Array],
  rules: ShardingRules | None,
  per_head: Sequence[jax.Array],
  per_token: Sequence[jax.Array] = (),
  per_sample: Sequence[jax.Array] = (),
) -> jax.Array:
  """Returns fn(*per_head, *per_token, *per_sample) computed with whole sequences per device.

  per_head: arrays [B, N, H, ...] (q, k, v, per-head routing); per_token: arrays [B, N, ...]
  without a head axis (shared routing), gathered whole on every device; per_sample: arrays
  [B, ...] with no sequence axis (the shot of each latent frame), split over the batch only.
  fn maps them to [B, N, H, D]. When the mesh's 'share' axis splits the sequence, fn is called
  with share=WorkShare(index, count) and must return its share's part (0 elsewhere). Without
  a mesh, or when no mesh axis splits the sequence and heads, fn runs as is.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty or mesh.size == 1:
    return fn(*per_head, *per_token, *per_sample)
  batch = rules.mesh_axes(ACTIVATION_BATCH)
  seq = tuple(a for a in rules.mesh_axes(ACTIVATION_LENGTH) if mesh.shape[a] > 1)
  heads = rules.mesh_axes(ACTIVATION_HEADS)
  ulysses_axes = tuple(a for a in seq if a != SHARE_AXIS)
  shared = SHARE_AXIS in seq
  name = lambda axes: axes[0] if len(axes) == 1 else axes

  def local(*arrays):
    head_arrays = arrays[: len(per_head)]
    token_arrays = arrays[len(per_head) : len(per_head) + len(per_token)]
    sample_arrays = arrays[len(per_head) + len(per_token) :]
    if shared:  # the share group's pieces first: then each context piece is contiguous
      head_arrays = [jax.lax.all_gather(a, SHARE_AXIS, axis=1, tiled=True) for a in head_arrays]
    if ulysses_axes:
      head_arrays = [
        jax.lax.all_to_all(a, name(ulysses_axes), split_axis=2, concat_axis=1, tiled=True)
        for a in head_arrays
      ]
    if seq:
      token_arrays = [jax.lax.all_gather(a, name(seq), axis=1, tiled=True) for a in token_arrays]
    kwargs = {}
    if shared:
      index = jax.lax.axis_index(SHARE_AXIS)
      kwargs["share"] = WorkShare(index, mesh.shape[SHARE_AXIS])
    out = fn(*head_arrays, *token_arrays, *sample_arrays, **kwargs)
    if ulysses_axes:
      out = jax.lax.all_to_all(out, name(ulysses_axes), split_axis=1, concat_axis=2, tiled=True)
    if shared:
      out = jax.lax.psum_scatter(out, SHARE_AXIS, scatter_dimension=1, tiled=True)
    return out

  head_spec = P(spec_entry(batch), spec_entry(seq), spec_entry(heads))
  token_spec = P(spec_entry(batch), spec_entry(seq))
  sample_spec = P(spec_entry(batch))
  in_specs = (
    *(head_spec,) * len(per_head),
    *(token_spec,) * len(per_token),
    *(sample_spec,) * len(per_sample),
  )
  # check_vma=False: Pallas kernels inside carry no varying-axis annotations.
  return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=head_spec, check_vma=False)(
    *per_head, *per_token, *per_sample
  )


def local_tokens(
  fn: Callable[..., jax.Array],
  rules: ShardingRules | None,
  q: jax.Array,
  token_ids: jax.Array,
  *replicated: jax.Array,
) -> jax.Array:
  """fn(q, token_ids, *replicated) on each device's own tokens (cross-attention to captions).

  q [B, N, H, D] stays split over batch, sequence and heads as between blocks, token_ids
  [B, N] over batch and sequence; the replicated arrays ([B, ...], heads on axis 3 when they
  have 5 dims: caption keys and values [B, S, L, H, D]) are whole along the sequence axes.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty or mesh.size == 1:
    return fn(q, token_ids, *replicated)
  batch = spec_entry(rules.mesh_axes(ACTIVATION_BATCH))
  seq = spec_entry(rules.mesh_axes(ACTIVATION_LENGTH))
  heads = spec_entry(rules.mesh_axes(ACTIVATION_HEADS))
  rest = tuple(P(batch, None, None, heads) if a.ndim == 5 else P(batch) for a in replicated)
  return jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=(P(batch, seq, heads), P(batch, seq), *rest),
    out_specs=P(batch, seq, heads),
    check_vma=False,
  )(q, token_ids, *replicated)


def sequence_shards(rules: ShardingRules | None) -> int:
  """How many ways the current mesh splits a hidden state's sequence between blocks."""
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty:
    return 1
  return math.prod(mesh.shape[a] for a in rules.mesh_axes(ACTIVATION_LENGTH))


def map_token_chunks(
  fn: Callable[[jax.Array], jax.Array], x: jax.Array, chunk: int, rules: ShardingRules | None
) -> jax.Array:
  """fn applied to x [B, N, D] in chunks of at most `chunk` of each device's tokens, one
  chunk after another (`lax.map`), each chunk a checkpoint. fn must act token by token.

  The chunks are cut from every device's own share of the sequence, [B, shards, N / shards, D]
  -> [chunks, B, shards, chunk, D], so the loop runs over an unsharded axis and no device
  gathers another's tokens; the last chunk is padded (and its padding dropped)."""
  batch, n, _ = x.shape
  shards = sequence_shards(rules)
  if n % shards:
    shards = 1  # an uneven split (padded by XLA): chunk the whole sequence
  local = n // shards
  count = cdiv(local, chunk)
  if count == 1:
    return fn(x)
  size = cdiv(local, count)
  pad = count * size - local
  seq = (ACTIVATION_BATCH, ACTIVATION_LENGTH)
  y = constrain(x.reshape(batch, shards, local, -1), rules, *seq, None, None)
  y = jnp.pad(y, ((0, 0), (0, 0), (0, pad), (0, 0)))
  y = jnp.moveaxis(y.reshape(batch, shards, count, size, -1), 2, 0)
  body = jax.checkpoint(
    lambda c: constrain(fn(constrain(c, rules, *seq, None, None)), rules, *seq, None, None)
  )
  out = jax.lax.map(body, y)  # [count, B, shards, size, D_out]
  out = jnp.moveaxis(out, 0, 2).reshape(batch, shards, count * size, -1)[:, :, :local]
  return out.reshape(batch, n, -1)
