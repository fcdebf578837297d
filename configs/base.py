"""What every model config shares: the paper's attention block, the flow-matching loss, the
training loop's safety knobs, the mesh and the sampler's seed. `tiny.py` and `wan1_3b_moga.py`
start from `get_config()` and set only what differs (data, model size, learning rate, steps,
sampler); the other configs build on those two.
"""

from ml_collections import ConfigDict, config_dict

from moga_jax.train.config_files import load_config_module

parallelism = load_config_module("parallelism")


def attention_block(num_groups: int) -> ConfigDict:
  """The paper's block: mean(gate x MoGA, STGA, per-frame attention), one routing per token."""
  a = ConfigDict()
  a.num_groups = num_groups  # MoGA's groups, the paper's M; None: no MoGA branch
  a.top_k = 1
  a.per_head_router = False  # the paper: one routing per token, shared by the heads
  a.balance_loss = "paper"  # eq. 8 as printed; "switch": Switch Transformer's
  a.stga_windows = (2, 2)  # spatial windows per latent frame; None: no STGA branch
  # None: a temporal group is a whole shot; an int: at most that many latent frames.
  # (placeholders: None, but overridable on the command line with their type)
  a.stga_temporal_group = config_dict.placeholder(int)
  a.stga_context_frames = 1  # K/V frames from each adjacent temporal group
  a.frame_attention = True  # the per-frame full-attention branch
  # The sliding 3D window (ours, crosses shot cuts): off; e.g. --config.model.attention.window=
  # (3,1,1) --config.model.attention.window_tile=(4,4,4) adds it.
  a.window = config_dict.placeholder(tuple)
  a.window_tile = config_dict.placeholder(tuple)
  a.combine = "mean"  # the paper: the mean of the branches' outputs
  a.implementation = None  # None: the best kernel for the backend
  # Run the branches over this many of a device's heads at a time (memory; None: all at once).
  a.head_chunk = config_dict.placeholder(int)
  # The kernels' tuning knobs (pallas_kernels.KernelOptions); None: the measured defaults.
  a.kernel_options = ConfigDict(
    dict(
      xla_chunk_tokens=2048,
      num_warps=config_dict.placeholder(int),
      num_stages=config_dict.placeholder(int),
    )
  )
  return a


def get_config(num_groups: int) -> ConfigDict:
  c = ConfigDict()
  # Which product the run trains and samples (moga_jax.train.pipeline): "tiny", the stand-in
  # text encoder and pixel fold around a small DiT, trained from scratch; or "wan", a Wan 2.1 DiT
  # on precomputed VAE latents and umT5 states (the Wan configs set it with their `video` section).
  c.pipeline = "tiny"
  c.seed = 0

  c.model = ConfigDict()
  c.model.patch = (1, 2, 2)
  c.model.scan_layers = False
  # What the backward pass keeps of each block (moga_jax.model.remat): "none", "full", "save_qkv",
  # "save_attention" or "offload_block_input" (block inputs on the host between the passes).
  c.model.remat = "none"
  # Run each FFN over chunks of this many tokens per device (None: all at once).
  c.model.ffn_token_chunk = config_dict.placeholder(int)
  # Compute dtype of the DiT's matmuls and attention: "float32" or "bfloat16" (parameters,
  # residual stream, norms, router, softmax statistics and the loss stay float32).
  c.model.dtype = "float32"
  # Storage dtype of every model parameter: "float32", or "bfloat16" to halve the weights'
  # memory when sampling (a float32 checkpoint loads into it, cast); train in float32.
  c.model.param_dtype = "float32"
  c.model.attention = attention_block(num_groups)

  c.diffusion = ConfigDict()
  c.diffusion.shift = 3.0  # Wan's flow shift for 480p
  c.diffusion.caption_dropout = 0.1
  c.diffusion.balance_weight = 0.1  # the paper's alpha

  c.train = ConfigDict()
  c.train.batch_size = 8
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.log_every = 10  # steps between host fetches of the metrics (each fetch syncs)
  c.train.skip_nonfinite_steps = 0  # > 0: drop up to that many non-finite steps, then stop
  c.train.grad_accum_steps = 1  # k > 1: one update from every k steps' gradients
  # Adam's first moment in "bfloat16" (memory) or None (float32); not needed by any config.
  c.train.adam_mu_dtype = config_dict.placeholder(str)
  c.train.ema_decay = 0.0  # > 0 (e.g. 0.999): keep an EMA of the weights; sampling uses it

  # Data parallel over all devices by default; e.g. --config.sharding.mesh.context=4.
  c.sharding = parallelism.sharding()
  c.distributed = parallelism.distributed()

  c.sample = ConfigDict()
  c.sample.seed = 0
  return c
