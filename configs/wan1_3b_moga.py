"""Wan 2.1 T2V 1.3B with MoGA self-attention: the paper's recipe (Sec. 4), in two stages.

  configs/wan1_3b_moga.py or configs/wan1_3b_moga.py:stage1   10-s multi-shot clips (157
      frames of 480x832 at 16 fps: 40 x 30 x 52 = 62,400 tokens), 3k steps
  configs/wan1_3b_moga.py:stage2   30-s multi-shot clips (477 frames: 120 x 30 x 52 =
      187,200 tokens, the paper's), 1k steps from stage 1's weights

Every block's self-attention is the paper's: the mean of MoGA (M = 5 routed groups, one routing
per token shared by all heads, gate p(g|x)), STGA (2x2 spatial windows per latent frame; a
temporal group is a whole shot, its keys and values also get one latent frame of each adjacent
group) and per-frame full attention. Group balancing loss in the paper's form, alpha = 0.1;
constant learning rate 1e-5 after a short linear warm-up (the warm-up is ours: the paper gives
none, and Adam's moments start at zero).

The DiT's widths are Wan2.1-T2V-1.3B's, so its weights load one to one (see
`moga_jax.convert_wan`); the MoGA routers are new and start from this config's seed. Sampling
uses the real umT5 encoder and Wan VAE from the converted folder:

  python -m moga_jax.convert_wan --src Wan2.1-T2V-1.3B-Diffusers --out weights/wan1_3b_moga
  python sample.py --config configs/wan1_3b_moga.py --weights weights/wan1_3b_moga \
      --prompt "a red fox runs through snow" --prompt "the fox curls up by a fire"

Several prompts split the video's latent frames into consecutive shots, each shot
cross-attending to its own caption while MoGA spans them all.

Training, stage 1 from the converted Wan weights:

  python train.py --config configs/wan1_3b_moga.py:stage1 --init weights/wan1_3b_moga \
      --workdir runs/wan1_3b_stage1 --config.data.source_dir=my_clips

Stage 2 starts from stage 1's weights. train.py's --init reads a converted folder (DiT + VAE +
umT5 + tokenizer), and a run resumes only from its own WORKDIR, so export stage 1's DiT
(routers included) and convert it back beside the original VAE, umT5 and tokenizer:

  python -m moga_jax.export --config configs/wan1_3b_moga.py:stage1 \
      --weights weights/wan1_3b_moga --workdir runs/wan1_3b_stage1 --out exported/stage1
  python -m moga_jax.convert_wan --src exported/stage1 --out weights/wan1_3b_moga_stage1 \
      --config configs/wan1_3b_moga.py:stage2
  cp -r weights/wan1_3b_moga/{vae,text_encoder,tokenizer} weights/wan1_3b_moga_stage1/
  python train.py --config configs/wan1_3b_moga.py:stage2 --init weights/wan1_3b_moga_stage1 \
      --workdir runs/wan1_3b_stage2 --config.data.source_dir=my_30s_clips

Both stages have the same model section, so the weights fit; stage 2 restarts Adam's moments
and its step count (1k steps of its own). Plan either stage with
`python -m moga_jax.plan --config configs/wan1_3b_moga.py:stage2`.
"""

from ml_collections import ConfigDict, config_dict

from moga_jax.config_files import load_config_module

parallelism = load_config_module("parallelism")

STAGES = {
  # (frames, shots per clip, steps, warm-up steps). Frames are 1 + 4k (the Wan VAE) at 16 fps:
  # 157 = 10 s (40 latent frames), 477 = 30 s (120 latent frames, 187,200 tokens). The paper
  # trains on multi-shot clips but gives no shot count or length (ours): 3 shots of ~3.3 s in
  # the 10-s clips, 6 shots of 5 s in the 30-s ones, i.e. shots of a few seconds as in
  # multi-shot data, each one STGA temporal group of 13-20 latent frames. Real clips carry their
  # own cuts (captions.jsonl); these counts are the caption slots per clip and the synthetic
  # clips' and the planner's layout.
  "stage1": (157, 3, 3_000, 100),
  "stage2": (477, 6, 1_000, 50),
}


def get_config(stage: str = "stage1") -> ConfigDict:
  """stage: "stage1" (also "" or None) or "stage2", the text after ':' in --config."""
  stage = stage or "stage1"
  if stage not in STAGES:
    raise ValueError(f"configs/wan1_3b_moga.py:{stage}: the stage must be one of {sorted(STAGES)}")
  frames, shots, steps, warmup = STAGES[stage]
  c = ConfigDict()
  c.seed = 0  # also seeds the new MoGA routers at conversion
  c.stage = stage

  c.video = ConfigDict()
  c.video.frames = frames
  c.video.height = 480
  c.video.width = 832
  c.video.fps = 16
  c.video.shots = shots  # shots per training clip (sampling: one per --prompt)
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
  c.data.subject_scale = 0.3  # synthetic clips only: the subject's radius / the smaller side
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
  # Compute dtype of the DiT's matmuls and attention: "float32" or "bfloat16" (parameters,
  # residual stream, norms, router, softmax statistics and the loss stay float32).
  c.model.dtype = "float32"
  c.model.attention = ConfigDict()
  c.model.attention.num_groups = 5  # the paper's M for Wan; None: no MoGA branch
  c.model.attention.top_k = 1
  c.model.attention.per_head_router = False  # one routing per token, shared by the heads
  c.model.attention.balance_loss = "paper"  # eq. 8 as printed; "switch": Switch Transformer's
  c.model.attention.stga_windows = (2, 2)  # 2x2 windows of 15x26 tokens; None: no STGA branch
  # None: a temporal group is a whole shot; an int: at most that many latent frames.
  # (placeholders: None, but overridable on the command line with their type)
  c.model.attention.stga_temporal_group = config_dict.placeholder(int)
  c.model.attention.stga_context_frames = 1  # K/V frames from each adjacent temporal group
  c.model.attention.frame_attention = True  # per-frame full attention branch
  c.model.attention.window = config_dict.placeholder(tuple)  # the old 3D window branch: off
  c.model.attention.window_tile = config_dict.placeholder(tuple)
  c.model.attention.combine = "mean"  # the paper: the mean of the branches' outputs
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
  c.diffusion.shift = 3.0  # Wan's flow shift for 480p
  c.diffusion.caption_dropout = 0.1
  c.diffusion.balance_weight = 0.1  # the paper's alpha

  c.train = ConfigDict()
  c.train.steps = steps  # the paper: 3k steps on 10-s clips, then 1k on 30-s clips
  c.train.batch_size = 8  # not given in the paper
  c.train.schedule = "constant"  # linear warm-up, then constant; or "cosine" (decay to 5%)
  c.train.learning_rate = 1e-5
  c.train.warmup_steps = warmup
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 2
  c.train.log_every = 10  # steps between host fetches of the metrics (each fetch syncs)
  c.train.skip_nonfinite_steps = 0  # > 0: drop up to that many non-finite steps, then stop
  c.train.grad_accum_steps = 1  # k > 1: one update from every k steps' gradients
  c.train.ema_decay = 0.0  # > 0 (e.g. 0.999): keep an EMA of the weights; sampling uses it

  c.sharding = parallelism.sharding()
  c.distributed = parallelism.distributed()

  c.sample = ConfigDict()
  c.sample.steps = 50
  c.sample.solver = "unipc"  # Wan's default (order 2, flow sigmas); or "euler"
  c.sample.guidance = 5.0  # Wan's default classifier-free guidance
  c.sample.negative_prompt = ""  # the unconditional branch's caption
  c.sample.seed = 0
  # Wan runs umT5-XXL in bfloat16 (11 GiB of weights instead of 23 GiB); DiT and VAE: float32.
  c.sample.text_encoder_dtype = "bfloat16"
  return c
