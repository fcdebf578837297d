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
`moga_jax.wan.convert`); the MoGA routers are new and start from this config's seed. Sampling
uses the real umT5 encoder and Wan VAE from the converted folder:

  python -m moga_jax.wan.convert --src Wan2.1-T2V-1.3B-Diffusers --out weights/wan1_3b_moga
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

  python -m moga_jax.wan.export --config configs/wan1_3b_moga.py:stage1 \
      --weights weights/wan1_3b_moga --workdir runs/wan1_3b_stage1 --out exported/stage1
  python -m moga_jax.wan.convert --src exported/stage1 --out weights/wan1_3b_moga_stage1 \
      --config configs/wan1_3b_moga.py:stage2
  cp -r weights/wan1_3b_moga/{vae,text_encoder,tokenizer} weights/wan1_3b_moga_stage1/
  python train.py --config configs/wan1_3b_moga.py:stage2 --init weights/wan1_3b_moga_stage1 \
      --workdir runs/wan1_3b_stage2 --config.data.source_dir=my_30s_clips

Both stages have the same model section, so the weights fit; stage 2 restarts Adam's moments
and its step count (1k steps of its own). Plan either stage with
`python -m moga_jax.tools.plan --config configs/wan1_3b_moga.py:stage2`.
"""

from ml_collections import ConfigDict

from moga_jax.train.config_files import load_config_module

base = load_config_module("base")

STAGES = {
  # (frames, shots per clip, optimizer updates, warm-up updates). Frames are 1 + 4k (the Wan
  # VAE) at 16 fps: 157 = 10 s (40 latent frames), 477 = 30 s (120 latent frames, 187,200
  # tokens). The paper trains on multi-shot clips but gives no shot count or length (ours):
  # 3 shots of ~3.3 s in the 10-s clips, 6 shots of 5 s in the 30-s ones, i.e. shots of a few
  # seconds as in multi-shot data, each one STGA temporal group of 13-20 latent frames. Real
  # clips carry their own cuts (captions.jsonl); these counts are the caption slots per clip
  # and the synthetic clips' and the planner's layout.
  "stage1": (157, 3, 3_000, 100),
  "stage2": (477, 6, 1_000, 50),
}

# The TPU slice each stage is laid out for, its mesh, and the batch per step x accumulated steps
# (8 clips per optimizer update, the configs' batch). Compiled for these slices from a CPU host
# (`python benchmarks/tpu_fit.py`, docs/tpu_fit.md), the whole training step fits each chip's
# HBM with room to spare. Ulysses splits the 12 heads at most 4 ways (context 4), so every chip
# holds at least a quarter of one clip's tokens between blocks: 15,600 at stage 1, 46,800 at
# stage 2.
SLICES = {
  # stage: (slice, mesh, batch per step, gradient accumulation steps)
  "stage1": ("v5e-8", dict(data=1, fsdp=2, context=4), 2, 4),
  "stage2": ("v5e-32", dict(data=1, fsdp=8, context=4), 8, 1),
}


def get_config(stage: str = "stage1") -> ConfigDict:
  """stage: "stage1" (also "" or None) or "stage2", the text after ':' in --config."""
  stage = stage or "stage1"
  if stage not in STAGES:
    raise ValueError(f"configs/wan1_3b_moga.py:{stage}: the stage must be one of {sorted(STAGES)}")
  frames, shots, updates, warmup = STAGES[stage]
  tpu_slice, mesh, batch, accumulate = SLICES[stage]
  # The paper's block with M = 5 for Wan, its loss and loop knobs, the mesh: see base.py. The
  # seed also seeds the new MoGA routers at conversion.
  c = base.get_config(num_groups=5)
  c.stage = stage
  c.pipeline = "wan"

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
  c.data.fit = "crop"  # other aspect ratios: "crop" (cover, cut the centre), "pad", "stretch"
  c.data.allow_placeholder_captions = False  # train on shots moga_jax.data.shots left uncaptioned
  c.data.caption_len = 512  # UTF-8 bytes kept per caption before tokenizing

  m = c.model
  m.in_channels = 16  # Wan VAE latent channels
  m.dim = 1536
  m.ffn_dim = 8960
  m.num_layers = 30
  m.num_heads = 12  # head_dim 128; 2x2 STGA windows of 15x26 tokens
  m.text_dim = 4096  # umT5-XXL
  m.freq_dim = 256
  m.dense_layers = ()
  # Memory (docs/tpu_fit.md): blocks scanned (one compiled block) and rematerialised, their
  # inputs kept in host memory between the passes, the FFN over 8K-token chunks, and bfloat16
  # matmuls and attention (residual stream, norms, router, softmax statistics, weights and
  # Adam's moments stay float32; results/bf16_tiny.json: the loss curve within 1.7% of float32).
  m.scan_layers = True
  m.remat = "offload_block_input"
  m.ffn_token_chunk = 8192
  m.dtype = "bfloat16"

  # the paper: 3k optimizer updates on 10-s clips, then 1k on 30-s clips; train.steps counts
  # steps, `grad_accum_steps` of which make one update (warm-up and schedule count updates).
  c.train.steps = updates * accumulate
  c.train.batch_size = batch  # per step; 8 clips per update (the paper gives no batch)
  c.train.grad_accum_steps = accumulate
  c.train.checkpoint_every = 200 * accumulate
  c.train.schedule = "constant"  # linear warm-up, then constant; or "cosine" (decay to 5%)
  c.train.learning_rate = 1e-5
  c.train.warmup_steps = warmup

  c.sharding = base.parallelism.sharding(**mesh, tpu_slice=tpu_slice)

  c.sample.steps = 50
  c.sample.solver = "unipc"  # Wan's default (order 2, flow sigmas); or "euler"
  c.sample.guidance = 5.0  # Wan's default classifier-free guidance
  c.sample.negative_prompt = ""  # the unconditional branch's caption
  # Wan runs umT5-XXL in bfloat16 (11 GiB of weights instead of 23 GiB); the DiT computes in
  # model.dtype (bfloat16 matmuls and attention, float32 weights), the VAE in float32.
  c.sample.text_encoder_dtype = "bfloat16"
  return c
