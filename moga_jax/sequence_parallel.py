"""Ulysses sequence parallelism: whole sequences for a slice of the heads, inside shard_map.

Between blocks a hidden state is split along the sequence over the 'context' mesh axes. MoGA's
routing, the group sort and the kernels need every token of a head on one device, so around
attention an all-to-all trades the sequence split for a head split ([B, N/c, H/t, D] ->
[B, N, H/(t*c), D] per device), attention runs locally, and a second all-to-all goes back.
Heads are independent, so the result equals unsharded attention exactly. The head count must
be divisible by context x tensor (the config validator checks it before compiling).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax.sharding import PartitionSpec as P

from moga_jax.sharding import ShardingRules, spec_entry


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
  fn maps them to [B, N, H, D]. Without a mesh, or when no mesh axis splits the sequence and
  heads, fn runs as is.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty or mesh.size == 1:
    return fn(*per_head, *per_token, *per_sample)
  batch = rules.mesh_axes("activation_batch")
  seq = tuple(a for a in rules.mesh_axes("activation_length") if mesh.shape[a] > 1)
  heads = rules.mesh_axes("activation_heads")
  seq_name = seq[0] if len(seq) == 1 else seq

  def local(*arrays):
    head_arrays = arrays[: len(per_head)]
    token_arrays = arrays[len(per_head) : len(per_head) + len(per_token)]
    sample_arrays = arrays[len(per_head) + len(per_token) :]
    if seq:
      head_arrays = [
        jax.lax.all_to_all(a, seq_name, split_axis=2, concat_axis=1, tiled=True)
        for a in head_arrays
      ]
      token_arrays = [jax.lax.all_gather(a, seq_name, axis=1, tiled=True) for a in token_arrays]
    out = fn(*head_arrays, *token_arrays, *sample_arrays)
    if seq:
      out = jax.lax.all_to_all(out, seq_name, split_axis=1, concat_axis=2, tiled=True)
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
  batch = spec_entry(rules.mesh_axes("activation_batch"))
  seq = spec_entry(rules.mesh_axes("activation_length"))
  heads = spec_entry(rules.mesh_axes("activation_heads"))
  rest = tuple(P(batch, None, None, heads) if a.ndim == 5 else P(batch) for a in replicated)
  return jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=(P(batch, seq, heads), P(batch, seq), *rest),
    out_specs=P(batch, seq, heads),
    check_vma=False,
  )(q, token_ids, *replicated)
