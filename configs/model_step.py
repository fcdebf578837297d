"""Knobs of `benchmarks/model_step.py`: the whole DiT's sampling and training steps, dense
attention against the paper's block.

  python benchmarks/model_step.py --config configs/model_step.py:gpu --json_out model_step.json
  python benchmarks/model_step.py --config configs/model_step.py:smoke   # CPU, seconds

Override any field with `--config.FIELD=VALUE`. Presets:
  gpu: Wan2.1-T2V-1.3B at its real widths (configs/wan1_3b_moga.py's model section: 30 blocks
    of width 1536, 12 heads), random weights, bfloat16 compute, at the two stages' clips:
    157 frames of 480x832 (62,400 tokens, 3 shots) and 477 frames (187,200 tokens, 6 shots).
    Dense attention is cuDNN's flash attention; the paper's block (M = 5, 2x2 STGA, per-frame)
    runs on the backend's kernels (pallas_gpu on a GPU). Median of 5 calls after 1 warm-up.
  smoke: the same code at tiny sizes (1 block of width 64, 48 tokens, 2 shots), XLA dense
    attention, the paper's block on the backend's choice (below 512 tokens: the dense masked
    oracle), 1 warm-up and 2 timed calls: runs on CPU in seconds (the CI test).
"""

from ml_collections import ConfigDict, config_dict


def get_config(preset: str = "gpu") -> ConfigDict:
  c = ConfigDict()
  c.preset = preset
  # The named config (configs/NAME.py, its first stage) whose model, train, diffusion and sample
  # sections are used: the DiT's widths, the optimizer, the flow shift, the guidance weight.
  c.model_config = "wan1_3b_moga"
  c.clips = ((157, 3), (477, 6))  # (video frames, shots) at video.height x video.width
  c.modes = ("sample", "train")  # one CFG denoising step; one optimizer step
  c.attentions = ("dense", "paper")  # every branch off; the config's block
  c.dtype = "bfloat16"  # model.dtype: compute dtype of the matmuls and attention
  c.param_dtype = config_dict.placeholder(str)  # None: the config's (float32, as train.py needs)
  # The training step's model.remat policy (moga_jax.model.remat; None: the named config's, whose
  # blocks are rematerialised with their inputs in host memory between the passes).
  c.remat = config_dict.placeholder(str)
  c.dense_implementation = "cudnn"  # the dense rows' jax.nn.dot_product_attention
  c.implementation = config_dict.placeholder(str)  # the paper's kernels; None: the backend's best
  c.train_batch = 1  # clips per training step (the sampling step's batch is 2: CFG)
  c.warmup = 1  # untimed calls after compiling
  c.repeats = 5  # timed calls; the median is reported
  # > 0: no row starts after this many seconds (it is recorded as skipped), and a row's timed
  # calls are cut to what fits the time left (at least one), so a time limit outside the
  # benchmark (benchmarks/gpu_session.sh) still leaves the JSON of every finished row.
  c.budget_s = 0.0
  c.seed = 0
  # Trace every row's step at its sizes (abstract: nothing allocated, compiled or run), e.g.
  # the gpu preset on a CPU with --config.dense_implementation=xla: a check before a GPU run.
  c.trace_only = False
  # jax's PRNG for the run's keys (the loss's noise and dropout); "": jax's default (threefry,
  # as train.py). Set by the command line only (it is process-wide).
  c.prng_impl = ""
  # Overrides of the named config's sections (the smoke preset's tiny sizes).
  c.model = ConfigDict()
  c.video = ConfigDict()
  if preset == "smoke":
    c.clips = ((9, 2),)  # 3 latent frames of 8x8 at 64x64: 48 tokens
    c.dense_implementation = "xla"
    c.repeats = 2
    c.model = ConfigDict(
      dict(dim=64, ffn_dim=128, num_layers=1, num_heads=2, text_dim=32, freq_dim=32)
    )
    c.video = ConfigDict(dict(height=64, width=64, caption_len=8))
    c.prng_impl = "rbg"  # threefry's programs take seconds more to compile on a CPU
  elif preset != "gpu":
    raise ValueError(f"unknown preset {preset!r}: use gpu or smoke")
  return c
