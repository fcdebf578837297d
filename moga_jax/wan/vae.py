"""The Wan 2.1 video VAE (diffusers' `AutoencoderKLWan`) in NNX, channels-last.

Video [B, T, H, W, 3] in [-1, 1] <-> latents [B, 1 + (T-1)/4, H/8, W/8, z_dim] (Wan 2.1's
factors). Every 3D convolution is causal in time, so a video can be processed in chunks: frame
0 alone, then 4 frames at a time in the encoder, one latent frame at a time in the decoder,
each convolution carrying the last frames of its input over to the next chunk. This chunking is
part of the model's numerics, not only a memory saving: the temporal up- and down-samplers treat
the first chunk differently (frame 0 maps to latent frame 0 alone).

The carried state is a pytree of arrays ("cache") with the same structure for every chunk; `None`
in place of a cache means "this is the first chunk", and every layer then behaves as if the video
were preceded by zero frames. After the first chunk the rest run under `jax.lax.scan`, so the
compiled program, and the memory beyond the input and output, do not grow with the frame count.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from moga_jax.wan.vae_config import ENCODE_CHUNK, WanVAEConfig

__all__ = ["WanVAE", "WanVAEConfig"]

# Frames of look-back a causal 3-tap temporal convolution takes from the previous chunk.
CACHE_T = 2

Cache = Any  # a pytree of arrays, or None for the first chunk


def _zeros_before(x: jax.Array, frames: int) -> jax.Array:
  return jnp.zeros((x.shape[0], frames, *x.shape[2:]), x.dtype)


class CausalConv3d(nnx.Module):
  """A 3D convolution, zero-padded "same" in space, that looks back `look_back` frames in time.

  Called with a cache (the last `look_back` input frames of the previous chunk) it continues a
  video; with None it starts one, as if preceded by zero frames. Either way it returns the
  output and the cache for the next chunk. `conv` applies the kernel with no time padding.
  """

  def __init__(
    self,
    cin: int,
    cout: int,
    kernel: tuple[int, int, int],
    *,
    look_back: int,
    stride_t: int = 1,
    dtype: Any,
    param_dtype: Any,
    precision: Any,
    rngs: nnx.Rngs,
  ):
    self.look_back = look_back
    self.stride_t = stride_t
    self.pad_hw = ((kernel[1] - 1) // 2, (kernel[2] - 1) // 2)
    self.dtype, self.precision = dtype, precision
    init = nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (*kernel, cin, cout), param_dtype))
    self.bias = nnx.Param(jnp.zeros((cout,), param_dtype))

  def conv(self, x: jax.Array) -> jax.Array:
    ph, pw = self.pad_hw
    y = jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      self.kernel[...].astype(self.dtype),
      window_strides=(self.stride_t, 1, 1),
      padding=((0, 0), (ph, ph), (pw, pw)),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      precision=self.precision,
    )
    return y + self.bias[...].astype(self.dtype)

  def __call__(self, x: jax.Array, cache: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    if self.look_back == 0:
      raise ValueError("a convolution without look-back has no cache: call .conv(x)")
    if cache is None:
      cache = _zeros_before(x, self.look_back)
    x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    return self.conv(x), x[:, -self.look_back :]


class ChannelL2Norm(nnx.Module):
  """x / max(||x||, 1e-12) * sqrt(C) * gamma over channels (torch's F.normalize), in float32."""

  def __init__(self, dim: int, *, dtype: Any, param_dtype: Any):
    self.gamma = nnx.Param(jnp.ones((dim,), param_dtype))
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    x = x / jnp.maximum(norm, 1e-12) * jnp.sqrt(jnp.float32(x.shape[-1]))
    return (x * self.gamma[...].astype(jnp.float32)).astype(self.dtype)


class ResidualBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, **kw):
    norm_kw = {"dtype": kw["dtype"], "param_dtype": kw["param_dtype"]}
    self.norm1 = ChannelL2Norm(cin, **norm_kw)
    self.conv1 = CausalConv3d(cin, cout, (3, 3, 3), look_back=CACHE_T, **kw)
    self.norm2 = ChannelL2Norm(cout, **norm_kw)
    self.conv2 = CausalConv3d(cout, cout, (3, 3, 3), look_back=CACHE_T, **kw)
    self.conv_shortcut = (
      CausalConv3d(cin, cout, (1, 1, 1), look_back=0, **kw) if cin != cout else None
    )

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c1, c2 = (None, None) if cache is None else cache
    skip = x if self.conv_shortcut is None else self.conv_shortcut.conv(x)
    x, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c1)
    x, c2 = self.conv2(jax.nn.silu(self.norm2(x)), c2)
    return x + skip, (c1, c2)


class SpatialAttention(nnx.Module):
  """Single-head self-attention over the pixels of each frame separately (no time mixing)."""

  def __init__(self, dim: int, *, dtype: Any, param_dtype: Any, precision: Any, rngs: nnx.Rngs):
    self.norm = ChannelL2Norm(dim, dtype=dtype, param_dtype=param_dtype)
    conv = lambda cout: nnx.Conv(
      dim, cout, (1, 1), dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs
    )
    self.to_qkv, self.proj = conv(3 * dim), conv(dim)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    frames = x.reshape(b * t, h, w, c)
    qkv = self.to_qkv(self.norm(frames)).reshape(b * t, h * w, 3 * c)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    logits = jnp.einsum("nqc,nkc->nqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits / jnp.sqrt(jnp.float32(c)), axis=-1).astype(v.dtype)
    out = jnp.einsum("nqk,nkc->nqc", weights, v).reshape(b * t, h, w, c)
    return x + self.proj(out).reshape(b, t, h, w, c)


class MidBlock(nnx.Module):
  def __init__(self, dim: int, **kw):
    self.resnets = nnx.List([ResidualBlock(dim, dim, **kw) for _ in range(2)])
    self.attention = SpatialAttention(dim, **kw)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c0, c1 = (None, None) if cache is None else cache
    x, c0 = self.resnets[0](x, c0)
    x, c1 = self.resnets[1](self.attention(x), c1)
    return x, (c0, c1)


class Downsample(nnx.Module):
  """Halves H and W (zero pad right/bottom, 3x3 stride 2) and, if temporal, T after frame 0.

  The temporal step is a 3-tap stride-2 conv over [last frame of the previous chunk, chunk]:
  frame 0 passes through alone, each later pair of frames becomes one.
  """

  def __init__(
    self, dim: int, temporal: bool, *, dtype: Any, param_dtype: Any, precision: Any, rngs: nnx.Rngs
  ):
    self.conv = nnx.Conv(
      dim,
      dim,
      (3, 3),
      strides=2,
      padding=((0, 1), (0, 1)),
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      rngs=rngs,
    )
    self.time_conv = (
      CausalConv3d(
        dim,
        dim,
        (3, 1, 1),
        look_back=0,
        stride_t=2,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        rngs=rngs,
      )
      if temporal
      else None
    )

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    b, t = x.shape[:2]
    x = self.conv(x.reshape(b * t, *x.shape[2:]))
    x = x.reshape(b, t, *x.shape[1:])
    if self.time_conv is None:
      return x, ()
    last = x[:, -1:]
    if cache is not None:
      x = self.time_conv.conv(jnp.concatenate([cache.astype(x.dtype), x], axis=1))
    return x, last


class Upsample(nnx.Module):
  """Doubles H and W (nearest, then 3x3 conv to `cout`) and, if temporal, T after frame 0.

  The temporal step is a causal conv to twice the channels whose halves become two consecutive
  frames. The first chunk skips it (frame 0 stays one frame) and leaves zeros as look-back.
  """

  def __init__(
    self,
    dim: int,
    cout: int,
    temporal: bool,
    *,
    dtype: Any,
    param_dtype: Any,
    precision: Any,
    rngs: nnx.Rngs,
  ):
    self.time_conv = (
      CausalConv3d(
        dim,
        2 * dim,
        (3, 1, 1),
        look_back=CACHE_T,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision,
        rngs=rngs,
      )
      if temporal
      else None
    )
    self.conv = nnx.Conv(
      dim,
      cout,
      (3, 3),
      padding=1,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    if self.time_conv is None:
      cache = ()
    elif cache is None:
      cache = _zeros_before(x, CACHE_T)
    else:
      x, cache = self.time_conv(x, cache)
      x = rearrange(x, "b t h w (s c) -> b (t s) h w c", s=2)
    b, t = x.shape[:2]
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    x = self.conv(x.reshape(b * t, *x.shape[2:]))
    return x.reshape(b, t, *x.shape[1:]), cache


class UpBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, num_resnets: int, upsample: str | None, **kw):
    self.resnets = nnx.List(
      [ResidualBlock(cin if i == 0 else cout, cout, **kw) for i in range(num_resnets)]
    )
    self.upsampler = (
      Upsample(cout, cout // 2, upsample == "3d", **kw) if upsample is not None else None
    )

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    caches = [None] * (len(self.resnets) + 1) if cache is None else list(cache)
    for i, resnet in enumerate(self.resnets):
      x, caches[i] = resnet(x, caches[i])
    if self.upsampler is not None:
      x, caches[-1] = self.upsampler(x, caches[-1])
    return x, tuple(caches)


def _layers(layers, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
  caches = [None] * len(layers) if cache is None else list(cache)
  for i, layer in enumerate(layers):
    x, caches[i] = layer(x, caches[i])
  return x, tuple(caches)


class Encoder(nnx.Module):
  """Video chunk [B, t, H, W, 3] -> moments chunk [B, t', H/f, W/f, 2 z_dim] (before quant)."""

  def __init__(self, config: WanVAEConfig, **kw):
    dims = [config.base_dim * m for m in (1, *config.dim_mult)]
    self.conv_in = CausalConv3d(config.in_channels, dims[0], (3, 3, 3), look_back=CACHE_T, **kw)
    down: list[nnx.Module] = []
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
      for j in range(config.num_res_blocks):
        down.append(ResidualBlock(cin if j == 0 else cout, cout, **kw))
      if i < len(config.dim_mult) - 1:
        down.append(Downsample(cout, bool(config.temperal_downsample[i]), **kw))
    self.down_blocks = nnx.List(down)
    self.mid_block = MidBlock(dims[-1], **kw)
    self.norm_out = ChannelL2Norm(dims[-1], dtype=kw["dtype"], param_dtype=kw["param_dtype"])
    self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, (3, 3, 3), look_back=CACHE_T, **kw)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c_in, c_down, c_mid, c_out = (None,) * 4 if cache is None else cache
    x, c_in = self.conv_in(x, c_in)
    x, c_down = _layers(self.down_blocks, x, c_down)
    x, c_mid = self.mid_block(x, c_mid)
    x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
    return x, (c_in, c_down, c_mid, c_out)


class Decoder(nnx.Module):
  """Latent chunk [B, t, h, w, z_dim] (after post-quant) -> video chunk [B, t', h*f, w*f, 3]."""

  def __init__(self, config: WanVAEConfig, **kw):
    mult = config.dim_mult
    dims = [config.decoder_dim * m for m in (mult[-1], *mult[::-1])]
    temporal = tuple(config.temperal_downsample[::-1])
    self.conv_in = CausalConv3d(config.z_dim, dims[0], (3, 3, 3), look_back=CACHE_T, **kw)
    self.mid_block = MidBlock(dims[0], **kw)
    up = []
    for i, (cin, cout) in enumerate(itertools.pairwise(dims)):
      # Each upsampler halves the channels, so every block after the first gets half its width.
      cin = cin // 2 if i > 0 else cin
      mode = None if i == len(mult) - 1 else ("3d" if temporal[i] else "2d")
      up.append(UpBlock(cin, cout, config.num_res_blocks + 1, mode, **kw))
    self.up_blocks = nnx.List(up)
    self.norm_out = ChannelL2Norm(dims[-1], dtype=kw["dtype"], param_dtype=kw["param_dtype"])
    self.conv_out = CausalConv3d(dims[-1], config.out_channels, (3, 3, 3), look_back=CACHE_T, **kw)

  def __call__(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    c_in, c_mid, c_up, c_out = (None,) * 4 if cache is None else cache
    x, c_in = self.conv_in(x, c_in)
    x, c_mid = self.mid_block(x, c_mid)
    x, c_up = _layers(self.up_blocks, x, c_up)
    x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
    return x, (c_in, c_mid, c_up, c_out)


def _chunked(step, first: jax.Array, rest: jax.Array | None) -> jax.Array:
  """step(chunk, cache) -> (out, cache) on `first` from no cache, then scanned over `rest`.

  rest is [n, B, t, ...] (chunks on the leading axis); outputs are joined along time.
  """
  out, cache = step(first, None)
  if rest is None:
    return out
  _, outs = jax.lax.scan(lambda c, chunk: step(chunk, c)[::-1], cache, rest)
  outs = rearrange(outs, "n b t ... -> b (n t) ...")
  return jnp.concatenate([out, outs.astype(out.dtype)], axis=1)


class WanVAE(nnx.Module):
  """encode: video [B, T, H, W, 3] in [-1, 1] -> posterior mean [B, T', H/f, W/f, z_dim];
  decode: latents -> video clamped to [-1, 1]. T = 1 + 4k frames map to T' = 1 + k latents
  (Wan 2.1: f = 8). The *_normalized variants use the diffusion model's latent scale.
  """

  def __init__(
    self,
    config: WanVAEConfig,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    precision: Any = None,
    rngs: nnx.Rngs,
  ):
    self.config = config
    kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
    z = config.z_dim
    self.encoder = Encoder(config, **kw)
    self.quant_conv = CausalConv3d(2 * z, 2 * z, (1, 1, 1), look_back=0, **kw)
    self.post_quant_conv = CausalConv3d(z, z, (1, 1, 1), look_back=0, **kw)
    self.decoder = Decoder(config, **kw)

  def encode(self, video: jax.Array) -> jax.Array:
    cfg = self.config
    if video.ndim != 5 or video.shape[-1] != cfg.in_channels:
      raise ValueError(f"video must be [B, T, H, W, {cfg.in_channels}], got {video.shape}")
    t, h, w = video.shape[1:4]
    if (t - 1) % ENCODE_CHUNK:
      raise ValueError(
        f"{t} frames: the VAE encodes 1 + {ENCODE_CHUNK}k frames (diffusers "
        "silently drops the frames beyond the last full chunk; we refuse)"
      )
    if h % cfg.spatial_factor or w % cfg.spatial_factor:
      raise ValueError(f"H={h}, W={w} must be multiples of {cfg.spatial_factor}")
    rest = None
    if t > 1:
      rest = rearrange(video[:, 1:], "b (n t) h w c -> n b t h w c", t=ENCODE_CHUNK)
    moments = self.quant_conv.conv(_chunked(self.encoder, video[:, :1], rest))
    return moments[..., : cfg.z_dim]

  def decode(self, latents: jax.Array) -> jax.Array:
    cfg = self.config
    if latents.ndim != 5 or latents.shape[-1] != cfg.z_dim:
      raise ValueError(f"latents must be [B, T', h, w, {cfg.z_dim}], got {latents.shape}")
    x = self.post_quant_conv.conv(latents)
    rest = rearrange(x[:, 1:], "b n h w c -> n b 1 h w c") if x.shape[1] > 1 else None
    return jnp.clip(_chunked(self.decoder, x[:, :1], rest), -1.0, 1.0)

  def _recip_std_and_mean(self) -> tuple[jax.Array, jax.Array]:
    # diffusers' pipelines multiply by 1/std (computed in float32) rather than divide by std.
    recip = 1.0 / jnp.asarray(self.config.latents_std, jnp.float32)
    return recip, jnp.asarray(self.config.latents_mean, jnp.float32)

  def encode_normalized(self, video: jax.Array) -> jax.Array:
    """(mean - latents_mean) * (1 / latents_std): the latents the diffusion model sees."""
    recip, mean = self._recip_std_and_mean()
    mu = self.encode(video)
    return ((mu.astype(jnp.float32) - mean) * recip).astype(mu.dtype)

  def decode_normalized(self, latents: jax.Array) -> jax.Array:
    """Inverse of encode_normalized, then decode: latents / (1 / latents_std) + latents_mean."""
    recip, mean = self._recip_std_and_mean()
    z = latents.astype(jnp.float32) / recip + mean
    return self.decode(z.astype(latents.dtype))
