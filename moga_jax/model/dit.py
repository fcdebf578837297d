"""The video diffusion transformer: Wan 2.1's layout with MoGA self-attention.

Latents [B, F, H, W, C] -> 3D patch embedding -> blocks (AdaLN-modulated self-attention, per-shot
text cross-attention, FFN) -> modulated head -> unpatchify. Names and shapes follow Wan 2.1
(patch_embedding, text_embedding, time_embedding, time_projection, blocks.*.self_attn.{q,k,v,o},
norm_q/norm_k, cross_attn, ffn, modulation, head) so its weights can be mapped in one to one.

Multi-shot: a sample holds S shots, each with its own caption; `frame_shot` [B, F] gives the
shot of every latent frame. Video tokens cross-attend to their own shot's caption only; in
self-attention, STGA stays inside a shot (plus one context frame each side) while MoGA's routed
groups span all shots, which is where the paper credits cross-shot consistency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from moga_jax.model.attention import MoGAAttention
from moga_jax.model.config import DENSE, AttentionConfig, DiTConfig, check_blocks
from moga_jax.model.layers import FeedForward, ShotCrossAttention, sinusoidal_embedding
from moga_jax.model.remat import checkpoint_policy, normalise_remat, tag_block_input
from moga_jax.parallel.axes import ACTIVATION_BATCH, ACTIVATION_EMBED, ACTIVATION_LENGTH
from moga_jax.parallel.sharding import ShardingRules, constrain
from pallas_kernels.common import check_int

_EPS = 1e-6


class _TwoPassLayerNorm(nnx.LayerNorm):
  """LayerNorm with the variance of the centred values, as torch computes it: flax's default
  E[x^2] - E[x]^2 loses most digits when a token's mean dwarfs its spread (large residual
  activations). Written out because flax's own two-pass option (use_fast_variance=False)
  made the whole training step 2.4x slower on CPU (measured on the tiny config)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.epsilon)
    if self.scale is not None:
      y = y * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(x.dtype)


def _layer_norm(dim: int, rngs: nnx.Rngs, *, affine: bool, param_dtype=jnp.float32):
  return _TwoPassLayerNorm(
    dim, epsilon=_EPS, use_bias=affine, use_scale=affine, param_dtype=param_dtype, rngs=rngs
  )


def _modulation(rngs: nnx.Rngs, rows: int, dim: int, param_dtype) -> nnx.Param:
  values = jax.random.normal(rngs.params(), (1, rows, dim)) / dim**0.5
  return nnx.Param(values.astype(param_dtype))


class DiTBlock(nnx.Module):
  def __init__(
    self,
    dim: int,
    ffn_dim: int,
    num_heads: int,
    *,
    attention: AttentionConfig,
    dtype=None,
    param_dtype=jnp.float32,
    rules: ShardingRules | None = None,
    nested_checkpoints: bool = False,
    ffn_token_chunk: int | None = None,
    rngs: nnx.Rngs,
  ):
    """attention: the self-attention's settings (`.replace(**DENSE)` of them for a dense
    block). dtype: the linears' and attention's compute dtype (None: float32, whatever the
    parameters' storage dtype). param_dtype: every parameter's storage dtype.
    nested_checkpoints: each attention branch is a checkpoint of its own (set under remat, so
    the block's backward holds one branch's buffers at a time). ffn_token_chunk: the FFN runs
    over chunks of this many tokens per device, each a checkpoint (None: all at once)."""
    dtypes = dict(dtype=dtype, param_dtype=param_dtype)
    self.norm1 = _layer_norm(dim, rngs, affine=False)
    self.self_attn = MoGAAttention(
      dim,
      num_heads,
      config=attention,
      rules=rules,
      checkpoint_branches=nested_checkpoints,
      rngs=rngs,
      **dtypes,
    )
    self.norm3 = _layer_norm(dim, rngs, affine=True, param_dtype=param_dtype)
    self.cross_attn = ShotCrossAttention(dim, num_heads, rules=rules, rngs=rngs, **dtypes)
    self.norm2 = _layer_norm(dim, rngs, affine=False)
    self.ffn = FeedForward(
      dim, ffn_dim, token_chunk=ffn_token_chunk, rules=rules, rngs=rngs, **dtypes
    )
    self.modulation = _modulation(rngs, 6, dim, param_dtype)

  def __call__(self, x, time_modulation, context, context_mask, token_shot, frame_shot, grid_shape):
    mod = (self.modulation[...] + time_modulation).astype(jnp.float32)  # [B, 6, dim]
    shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (mod[:, i : i + 1] for i in range(6))
    y, balance = self.self_attn(
      self.norm1(x) * (1 + scale_a) + shift_a, grid_shape=grid_shape, frame_shot=frame_shot
    )
    x = x + gate_a * y
    x = x + self.cross_attn(self.norm3(x), context, context_mask, token_shot)
    x = x + gate_f * self.ffn(self.norm2(x) * (1 + scale_f) + shift_f)
    return x, balance


class VideoDiT(nnx.Module):
  """Args:
  in_channels, out_channels: latent channels. dim, ffn_dim, num_layers, num_heads: widths.
  text_dim: width of the caption embeddings fed in (4096 for umT5-XXL).
  patch: (t, h, w) patch of the 3D patch embedding (Wan: (1, 2, 2)).
  attention: the MoGA blocks' `AttentionConfig` (or a mapping of its fields), or None for
    dense blocks.
  dense_layers: indices of blocks kept dense (e.g. the first one); rest use `attention`.
  scan_layers: run the blocks with nnx.scan (all blocks must be alike).
  remat: what the backward pass keeps of each block, a policy of `moga_jax.model.remat` ("none",
    "full", "save_qkv", "save_attention", "offload_block_input"; True means "full"): the
    block runs under jax.checkpoint with that policy, trading compute for memory; under any
    policy but "none" its attention branches are nested checkpoints.
  ffn_token_chunk: run each FFN over chunks of this many tokens per device (None: at once).
  rules: logical sharding rules (`moga_jax.parallel.sharding`): hidden states are kept split
    along the sequence between blocks and attention runs Ulysses-parallel when a mesh is set.
    None: no sharding annotations (one device, or the caller's own).
  dtype: compute dtype of the matmuls and attention (e.g. bfloat16; None: float32). The
    residual stream, the norms' statistics, the time embedding and modulation, the router,
    the attention softmax statistics and the returned velocity stay float32.
  param_dtype: storage dtype of every parameter (float32; bfloat16 halves the weights'
    memory, e.g. to sample a big model on one GPU; they are upcast where float32 is kept).
  """

  def __init__(
    self,
    *,
    in_channels: int,
    out_channels: int,
    dim: int,
    ffn_dim: int,
    num_layers: int,
    num_heads: int,
    text_dim: int,
    patch: Sequence[int] = (1, 2, 2),
    freq_dim: int = 256,
    attention: AttentionConfig | Mapping | None = None,
    dense_layers: Sequence[int] = (),
    scan_layers: bool = False,
    remat: bool | str = False,
    ffn_token_chunk: int | None = None,
    dtype=None,
    param_dtype=jnp.float32,
    rules: ShardingRules | None = None,
    rngs: nnx.Rngs,
  ):
    check_blocks(dim, num_heads, num_layers, dense_layers, scan_layers, attention)
    attention = None if attention is None else AttentionConfig.of(attention)
    if ffn_token_chunk is not None:
      check_int("ffn_token_chunk", ffn_token_chunk)
    self.patch = tuple(int(p) for p in patch)
    self.out_channels, self.freq_dim = out_channels, freq_dim
    self.scan_layers, self.remat, self.rules = scan_layers, normalise_remat(remat), rules
    self.dtype = None if dtype is None or jnp.dtype(dtype) == jnp.float32 else jnp.dtype(dtype)
    dense = set(dense_layers)
    routed = attention is not None and attention.num_groups is not None
    self.moga_layers = tuple(i for i in range(num_layers) if i not in dense) if routed else ()
    stored = dict(param_dtype=param_dtype, rngs=rngs)
    self.patch_embedding = nnx.Conv(
      in_channels, dim, kernel_size=self.patch, strides=self.patch, padding="VALID", **stored
    )
    self.text_embedding = nnx.Sequential(
      nnx.Linear(text_dim, dim, dtype=self.dtype, **stored),
      lambda x: jax.nn.gelu(x, approximate=True),
      nnx.Linear(dim, dim, dtype=self.dtype, **stored),
    )
    # The time embedding computes in float32 whatever the parameters' storage dtype.
    time_linear = lambda i, o: nnx.Linear(i, o, dtype=jnp.float32, **stored)
    self.time_embedding = nnx.Sequential(
      time_linear(freq_dim, dim), jax.nn.silu, time_linear(dim, dim)
    )
    self.time_projection = nnx.Sequential(jax.nn.silu, time_linear(dim, 6 * dim))

    # Dense blocks keep the section's q/k norm and RoPE settings, with every branch off.
    dense_attention = (attention or AttentionConfig()).replace(**DENSE)

    def block(rngs, dense: bool):
      return DiTBlock(
        dim,
        ffn_dim,
        num_heads,
        attention=dense_attention if dense or attention is None else attention,
        dtype=self.dtype,
        param_dtype=param_dtype,
        rules=rules,
        nested_checkpoints=self.remat != "none",
        ffn_token_chunk=ffn_token_chunk,
        rngs=rngs,
      )

    if scan_layers:

      @nnx.split_rngs(splits=num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def stacked(rngs):
        return block(rngs, attention is None)

      self.blocks = stacked(rngs)
    else:
      self.blocks = nnx.List([block(rngs, i in dense) for i in range(num_layers)])
    self.head_norm = _layer_norm(dim, rngs, affine=False)
    self.head_modulation = _modulation(rngs, 2, dim, param_dtype)
    self.head = nnx.Linear(
      dim,
      out_channels * math.prod(self.patch),
      dtype=self.dtype,
      kernel_init=nnx.initializers.zeros_init(),
      **stored,
    )

  @classmethod
  def from_config(
    cls, config: DiTConfig, *, rules: ShardingRules | None = None, rngs: nnx.Rngs
  ) -> VideoDiT:
    return cls(**config.as_dict(), rules=rules, rngs=rngs)

  def _embed_patches(self, latents: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
    """The strided 3D conv of the patch embedding, as patchify + matmul with the same kernel:
    the tokens are split along the sequence before the matmul, so no device ever holds the
    whole [B, N, dim] embedding (10 GiB at 580K tokens for dim 5120)."""
    b, c = latents.shape[0], latents.shape[-1]
    (pt, ph, pw), (gt, gh, gw) = self.patch, grid
    patches = latents.reshape(b, gt, pt, gh, ph, gw, pw, c)
    patches = jnp.transpose(patches, (0, 1, 3, 5, 2, 4, 6, 7)).reshape(b, gt * gh * gw, -1)
    patches = constrain(patches, self.rules, ACTIVATION_BATCH, ACTIVATION_LENGTH, None)
    conv = self.patch_embedding
    kernel = conv.kernel[...].reshape(-1, conv.out_features)  # [(pt, ph, pw, C), dim]
    compute = self.dtype or jnp.float32
    x = jnp.dot(
      patches.astype(compute), kernel.astype(compute), preferred_element_type=jnp.float32
    )  # the residual stream is float32
    return x + conv.bias[...].astype(jnp.float32) if conv.bias is not None else x

  def __call__(
    self,
    latents: jax.Array,
    t: jax.Array,
    context: jax.Array,
    context_mask: jax.Array,
    frame_shot: jax.Array,
  ) -> tuple[jax.Array, jax.Array]:
    """latents [B, F, H, W, C]; t [B] in [0, 1]; context [B, S, L, text_dim]; context_mask
    bool [B, S, L]; frame_shot int32 [B, F] (shot of each latent frame).

    Returns (velocity [B, F, H, W, out_channels], mean balancing loss over MoGA blocks).
    """
    b, f, h, w, _ = latents.shape
    pt, ph, pw = self.patch
    if f % pt or h % ph or w % pw:
      raise ValueError(
        f"latent grid (F, H, W) = {(f, h, w)} must be divisible by the patch {self.patch}"
      )
    if frame_shot.shape != (b, f):
      raise ValueError(
        f"frame_shot must have shape [batch, frames] = {(b, f)}, got {tuple(frame_shot.shape)}"
      )
    grid = (f // pt, h // ph, w // pw)
    hidden = lambda x: constrain(
      x, self.rules, ACTIVATION_BATCH, ACTIVATION_LENGTH, ACTIVATION_EMBED
    )
    x = hidden(self._embed_patches(latents, grid))
    token_shot = jnp.repeat(frame_shot[:, ::pt], grid[1] * grid[2], axis=1)  # [B, N]
    # Self-attention's shots: frames outside every shot (-1, at the end) join the shot before
    # them, so the ids are non-decreasing as STGA needs.
    grid_shot = jax.lax.cummax(frame_shot[:, ::pt].astype(jnp.int32), axis=1)
    time = self.time_embedding(sinusoidal_embedding(1000.0 * t, self.freq_dim))
    time_modulation = self.time_projection(time).reshape(b, 6, -1)
    context = self.text_embedding(context.astype(jnp.float32))

    def run(block, x):
      x = tag_block_input(x)
      x, balance = block(x, time_modulation, context, context_mask, token_shot, grid_shot, grid)
      return hidden(x), balance

    if self.remat != "none":
      run = nnx.remat(run, policy=checkpoint_policy(self.remat))
    if self.scan_layers:

      @nnx.scan(in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))
      def scan(block, x):
        return run(block, x)

      x, balances = scan(self.blocks, x)
    else:
      balances = []
      for block in self.blocks:
        x, balance = run(block, x)
        balances.append(balance)
      balances = jnp.stack(balances)
    balance = (
      jnp.mean(balances[jnp.asarray(self.moga_layers)])
      if self.moga_layers
      else jnp.zeros((), jnp.float32)
    )

    shift, scale = jnp.split(self.head_modulation[...] + time[:, None], 2, axis=1)
    x = self.head(self.head_norm(x) * (1 + scale) + shift)
    x = x.astype(jnp.float32).reshape(b, *grid, pt, ph, pw, self.out_channels)
    x = jnp.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7)).reshape(b, f, h, w, self.out_channels)
    return x, balance
