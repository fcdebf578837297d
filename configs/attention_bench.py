"""Knobs of `benchmarks/attention.py`, one preset per use.

Pick a preset with `--config configs/attention_bench.py:PRESET` and override any field with
`--config.FIELD=VALUE`. Presets:
  demo: the quick run behind `make demo` (4K and 8K tokens), about two minutes on 2 CPU cores.
  full: the README table, 4K/8K/16K; dense attention at 16K needs ~16 GiB and ~25 s a call.
  long: the xla path alone at 32K and 64K, where dense attention no longer fits in memory.
  interpret: the Pallas kernels in CPU interpret mode at 8K tokens (2 heads, for time), with
    the speed target checked for every implementation.
  gpu: the kernel on a GPU machine: bf16, head_dim 128, 32K-512K tokens, G 8/16/32, against
    cuDNN dense attention.
  block: the paper's whole block (MoGA M=5 + 2x2 STGA + per-frame, averaged) and each branch,
    8K-64K tokens on the xla path (frames of 32x32 tokens, a shot every 8 frames).
  gpu_block: the same block on a GPU machine with the pallas_gpu kernels, bf16, head_dim 128,
    32K-576K tokens (576 frames of 32x32), against cuDNN dense attention.
"""

from ml_collections import ConfigDict


def get_config(preset: str = "demo") -> ConfigDict:
  c = ConfigDict()
  c.preset = preset
  c.block = preset in ("block", "gpu_block")  # time the paper's block, not group attention alone
  c.batch = 1
  c.heads = 8
  c.head_dim = 64
  c.dtype = "float32"
  c.tile = 128
  c.seed = 0
  c.repeats = 2  # timed calls after one warm-up call; the median is reported
  c.implementations = ("xla",)
  c.dense_implementation = "xla"  # passed to jax.nn.dot_product_attention
  c.dense_max_seq = 16384  # dense jax.nn.dot_product_attention above this does not fit in 24 GiB
  c.reference_max_seq = 4096  # the dense masked oracle needs several N x N buffers
  c.target_seq = 8192  # the speed target: at this length, G=16 vs G=1 in one implementation
  c.target_speedup = 6.0
  c.out = ""  # JSON path; default benchmarks/results/attention_<preset>.json
  # The `block` preset's shape (ignored by the others).
  c.block_groups = 5
  c.block_windows = (2, 2)
  c.block_frame = (32, 32)  # tokens per latent frame (H, W)
  c.block_shot_frames = 8
  if preset == "demo":
    c.seq_lens = (4096, 8192)
    c.group_counts = (1, 4, 16)
  elif preset == "full":
    c.seq_lens = (4096, 8192, 16384)
    c.group_counts = (1, 4, 16)
    c.implementations = ("xla", "reference")
  elif preset == "long":
    c.seq_lens = (32768, 65536)
    c.group_counts = (4, 16)
    c.dense_max_seq = 0
    c.repeats = 1
  elif preset == "interpret":
    c.heads = 2
    c.repeats = 3
    c.seq_lens = (8192,)
    c.group_counts = (1, 16)
    c.implementations = ("xla", "pallas_tpu", "pallas_gpu")
  elif preset == "gpu":
    c.dtype = "bfloat16"
    c.head_dim = 128
    c.repeats = 5
    c.seq_lens = (32768, 65536, 131072, 262144, 524288)
    c.group_counts = (8, 16, 32)
    c.implementations = ("pallas_gpu",)
    c.dense_implementation = "cudnn"
    c.dense_max_seq = 524288
    c.target_seq = 0  # no G=1 rows: the >= 80% of ideal goal is read off the table
  elif preset == "block":
    c.heads = 4
    c.repeats = 1
    c.seq_lens = (8192, 16384, 32768, 65536)
    c.dense_max_seq = 16384
  elif preset == "gpu_block":
    c.dtype = "bfloat16"
    c.head_dim = 128
    c.repeats = 3
    c.seq_lens = (32768, 131072, 589824)
    c.implementations = ("pallas_gpu",)
    c.dense_implementation = "cudnn"
    c.dense_max_seq = 589824
  else:
    raise ValueError(
      f"unknown preset {preset!r}: use demo, full, long, interpret, gpu, block or gpu_block"
    )
  return c
