"""The tiny default: trains on 2 CPU cores in about ten minutes (`make demo`).

Two-shot, 16-frame, 32x32 clips of coloured shapes moving on coloured backgrounds (synthetic
mp4s, made on first use); a byte-level text encoder and a space-to-depth latent (stand-ins for
umT5 and the Wan VAE); a 4-block DiT whose blocks after the first use the paper's attention
block: the mean of MoGA (4 groups, one routing per token), shot-aware STGA (2x2 windows) and
per-frame attention. Override any field on the command line, e.g. --config.train.steps=50.
"""

from ml_collections import ConfigDict, config_dict

from moga_jax.config_files import load_config_module

parallelism = load_config_module("parallelism")


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
  c.data.subject_scale = 0.3  # synthetic clips: the subject's radius / the frame's smaller side

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
  # Compute dtype of the DiT's matmuls and attention: "float32" or "bfloat16" (parameters,
  # residual stream, norms, router, softmax statistics and the loss stay float32).
  c.model.dtype = "float32"
  c.model.attention = ConfigDict()
  c.model.attention.num_groups = 4  # MoGA's groups; None: no MoGA branch
  c.model.attention.top_k = 1
  c.model.attention.per_head_router = False  # the paper: one routing per token
  c.model.attention.balance_loss = "paper"
  c.model.attention.stga_windows = (2, 2)  # None: no STGA branch
  # None (a placeholder, overridable with an int): a temporal group is a whole shot.
  c.model.attention.stga_temporal_group = config_dict.placeholder(int)
  c.model.attention.stga_context_frames = 1
  c.model.attention.frame_attention = True
  # The sliding 3D window (ours, crosses shot cuts): off; e.g. --config.model.attention.window=
  # (3,1,1) --config.model.attention.window_tile=(4,4,4) adds it.
  c.model.attention.window = config_dict.placeholder(tuple)
  c.model.attention.window_tile = config_dict.placeholder(tuple)
  c.model.attention.combine = "mean"
  c.model.attention.implementation = None
  # The kernels' tuning knobs (pallas_kernels.KernelOptions); None: the measured defaults.
  c.model.attention.kernel_options = ConfigDict(
    dict(
      xla_chunk_tokens=2048,
      num_warps=config_dict.placeholder(int),
      num_stages=config_dict.placeholder(int),
    )
  )

  c.diffusion = ConfigDict()
  c.diffusion.shift = 3.0
  c.diffusion.caption_dropout = 0.1
  c.diffusion.balance_weight = 0.1  # alpha, the paper's

  c.train = ConfigDict()
  c.train.steps = 800  # ~0.8 s a step on 2 cores
  c.train.batch_size = 8
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.log_every = 10  # steps between host fetches of the metrics (each fetch syncs)
  c.train.skip_nonfinite_steps = 0  # > 0: drop up to that many non-finite steps, then stop
  c.train.grad_accum_steps = 1  # k > 1: one update from every k steps' gradients
  c.train.ema_decay = 0.0  # > 0 (e.g. 0.999): keep an EMA of the weights; sampling uses it

  # Data parallel over all devices by default; e.g. --config.sharding.mesh.context=4.
  c.sharding = parallelism.sharding()
  c.distributed = parallelism.distributed()

  c.sample = ConfigDict()
  c.sample.steps = 30
  c.sample.guidance = 3.0
  c.sample.solver = "euler"  # or "unipc" (Wan's multistep solver)
  c.sample.seed = 0
  return c
