"""Paper scale: a Wan-2.1-14B-shaped DiT with MoGA over a minute of 480p video at 24 fps.

1441 frames of 480x832 through the Wan VAE (4x time, 8x space, 16 channels) are a 361x60x104
latent; the (1, 2, 2) patch makes 361 x 30 x 52 = 563,160 tokens, the paper's "~580K" context
(within 3%). Every block uses MoGA (16 per-head groups) plus a local 3D window; blocks are scanned
and rematerialised. Training reads precomputed VAE latents and umT5 states. Plan it with

  python -m moga_jax.plan --config configs/wan14b_moga_580k.py [--mesh fsdp=8,context=8] [--aot]
"""

from ml_collections import ConfigDict

from configs import parallelism


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0

  c.video = ConfigDict()
  c.video.frames = 1441  # 60 s at 24 fps, plus Wan's leading frame
  c.video.height = 480
  c.video.width = 832
  c.video.fps = 24
  c.video.shots = 8
  c.video.vae_stride = (4, 8, 8)  # Wan 2.1 VAE: time, height, width
  c.video.caption_len = 512  # umT5 tokens per shot caption

  c.model = ConfigDict()
  c.model.in_channels = 16  # Wan VAE latent channels
  c.model.dim = 5120
  c.model.ffn_dim = 13824
  c.model.num_layers = 40
  c.model.num_heads = 40  # head_dim 128
  c.model.text_dim = 4096  # umT5-XXL
  c.model.freq_dim = 256
  c.model.patch = (1, 2, 2)
  c.model.dense_layers = ()
  c.model.scan_layers = True
  c.model.remat = True
  c.model.attention = ConfigDict()
  c.model.attention.num_groups = 16
  c.model.attention.top_k = 1
  c.model.attention.per_head_router = True
  # Local branch: 4x4x8-token tiles (128 tokens), each seeing a 3x3x3 block of tiles.
  c.model.attention.window = (3, 3, 3)
  c.model.attention.window_tile = (4, 4, 8)
  c.model.attention.implementation = None

  c.diffusion = ConfigDict()
  c.diffusion.shift = 5.0  # Wan's training shift
  c.diffusion.caption_dropout = 0.1
  c.diffusion.balance_weight = 0.01

  c.train = ConfigDict()
  c.train.steps = 10_000
  c.train.batch_size = 8  # one clip per fsdp group of the default mesh
  c.train.learning_rate = 1e-5
  c.train.warmup_steps = 200
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0

  # 64 devices: 8-way FSDP x 8-way sequence parallelism (5 of the 40 heads per device inside
  # attention).
  c.sharding = parallelism.sharding(data=1, fsdp=8, context=8, tensor=1)
  c.distributed = parallelism.distributed()
  return c
