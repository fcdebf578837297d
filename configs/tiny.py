"""The tiny default: trains on 2 CPU cores in about ten minutes (`make demo`).

Two-shot, 16-frame, 32x32 clips of coloured shapes moving on coloured backgrounds (synthetic
mp4s, made on first use); a byte-level text encoder and a space-to-depth latent (stand-ins for
umT5 and the Wan VAE); a 4-block DiT whose blocks after the first use MoGA with 4 per-head groups
plus a local window branch. Override any field on the command line, e.g. --config.train.steps=50.
"""

from ml_collections import ConfigDict

from configs import parallelism


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0

  c.data = ConfigDict()
  c.data.source_dir = ""  # folder of mp4s + captions.jsonl; "" = WORKDIR/../data/synthetic
  c.data.dataset_dir = ""  # prepared array_record dataset; "" = next to the source
  c.data.synthetic_videos = 256  # clips generated when source_dir has none
  c.data.shots = 2
  c.data.frames_per_shot = 8
  c.data.height = 32
  c.data.width = 32
  c.data.fps = 8
  c.data.max_shots = 2
  c.data.caption_len = 48

  c.model = ConfigDict()
  c.model.latent_factor = 4  # space-to-depth: 32x32x3 pixels -> 8x8x48 latents
  c.model.patch = (1, 2, 2)
  # Wider than a token's 192 latent values (2x2 patches of 48 channels): a narrower model
  # cannot carry the noise through and its samples stay noisy (measured: plateau at 0.5 MSE).
  c.model.dim = 256
  c.model.ffn_dim = 512
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.text_dim = 64
  c.model.text_layers = 2
  c.model.caption_len = c.data.get_ref("caption_len")
  c.model.dense_layers = (0,)
  c.model.scan_layers = False
  c.model.remat = False
  c.model.attention = ConfigDict()
  c.model.attention.num_groups = 4  # None: dense self-attention everywhere
  c.model.attention.top_k = 1
  c.model.attention.per_head_router = True
  # Local branch: 4-frame x whole-frame tiles, each seeing its temporal neighbours. None: off.
  c.model.attention.window = (3, 1, 1)
  c.model.attention.window_tile = (4, 4, 4)
  c.model.attention.implementation = None

  c.diffusion = ConfigDict()
  c.diffusion.shift = 3.0
  c.diffusion.caption_dropout = 0.1
  c.diffusion.balance_weight = 0.01

  c.train = ConfigDict()
  c.train.steps = 800  # ~0.8 s a step on 2 cores
  c.train.batch_size = 8
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.log_every = 1

  # Data parallel over all devices by default; e.g. --config.sharding.mesh.context=4.
  c.sharding = parallelism.sharding()
  c.distributed = parallelism.distributed()

  c.sample = ConfigDict()
  c.sample.steps = 30
  c.sample.guidance = 3.0
  c.sample.seed = 0
  return c
