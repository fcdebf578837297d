"""Wan 2.1 T2V 1.3B with MoGA self-attention: convert, sample, fine-tune.

The DiT's widths are Wan2.1-T2V-1.3B's, so its weights load one to one (see
`moga_jax.convert_wan`); the MoGA routers are new and start from this config's seed. Sampling
uses the real umT5 encoder and Wan VAE from the converted folder:

  python -m moga_jax.convert_wan --src Wan2.1-T2V-1.3B-Diffusers --out weights/wan1_3b_moga
  python sample.py --config configs/wan1_3b_moga.py --weights weights/wan1_3b_moga \
      --prompt "a red fox runs through snow" --prompt "the fox curls up by a fire"

Several prompts split the video's latent frames into consecutive shots, each shot
cross-attending to its own caption while MoGA spans them all.
"""

from ml_collections import ConfigDict

from configs import parallelism


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0  # also seeds the new MoGA routers at conversion

  c.video = ConfigDict()
  c.video.frames = 81  # 5 s at Wan's 16 fps: 21 latent frames; 1 + 4k frames
  c.video.height = 480
  c.video.width = 832
  c.video.fps = 16
  c.video.shots = 1  # shots per training clip (sampling: one per --prompt)
  c.video.vae_stride = (4, 8, 8)  # Wan 2.1 VAE: time, height, width (checked at load)
  c.video.caption_len = 512  # umT5 tokens per shot caption, as Wan

  # Training clips: mp4s + captions.jsonl (README, "Your own videos"), cut to video.frames,
  # resized to video.height x width, then encoded once by the converted VAE and umT5.
  c.data = ConfigDict()
  c.data.source_dir = ""  # "" = synthetic clips, made on first use (a smoke test, not data)
  c.data.dataset_dir = ""  # prepared videos; "" = next to the source
  c.data.synthetic_videos = 16
  frames, shots = c.video.get_ref("frames"), c.video.get_ref("shots")
  c.data.num_frames = frames
  c.data.shots = shots
  c.data.max_shots = shots
  c.data.frames_per_shot = (frames + shots - 1) // shots  # synthetic clips only
  c.data.height = c.video.get_ref("height")
  c.data.width = c.video.get_ref("width")
  c.data.fps = c.video.get_ref("fps")
  c.data.caption_len = 512  # UTF-8 bytes kept per caption before tokenizing

  c.model = ConfigDict()
  c.model.in_channels = 16  # Wan VAE latent channels
  c.model.dim = 1536
  c.model.ffn_dim = 8960
  c.model.num_layers = 30
  c.model.num_heads = 12  # head_dim 128
  c.model.text_dim = 4096  # umT5-XXL
  c.model.freq_dim = 256
  c.model.patch = (1, 2, 2)
  c.model.dense_layers = ()
  c.model.scan_layers = False
  c.model.remat = False
  c.model.attention = ConfigDict()
  c.model.attention.num_groups = 8  # 21x30x52 = 32,760 tokens: ~4K per group
  c.model.attention.top_k = 1
  c.model.attention.per_head_router = True
  # Local branch: 3x6x8-token tiles (144 tokens) seeing a 3x3x3 block of tiles.
  c.model.attention.window = (3, 3, 3)
  c.model.attention.window_tile = (3, 6, 8)
  c.model.attention.implementation = None

  c.diffusion = ConfigDict()
  c.diffusion.shift = 3.0  # Wan's flow shift for 480p
  c.diffusion.caption_dropout = 0.1
  c.diffusion.balance_weight = 0.01

  c.train = ConfigDict()
  c.train.steps = 2_000
  c.train.batch_size = 8
  c.train.learning_rate = 1e-5
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.log_every = 1

  c.sharding = parallelism.sharding()
  c.distributed = parallelism.distributed()

  c.sample = ConfigDict()
  c.sample.steps = 50
  c.sample.guidance = 5.0  # Wan's default classifier-free guidance
  c.sample.negative_prompt = ""  # the unconditional branch's caption
  c.sample.seed = 0
  # Wan runs umT5-XXL in bfloat16 (11 GiB of weights instead of 23 GiB); DiT and VAE: float32.
  c.sample.text_encoder_dtype = "bfloat16"
  return c
