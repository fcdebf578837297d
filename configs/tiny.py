"""The tiny default: trains on 2 CPU cores in about ten minutes (`make demo`).

Two-shot, 16-frame, 32x32 clips of coloured shapes moving on coloured backgrounds (synthetic
mp4s, made on first use); a byte-level text encoder and a space-to-depth latent (stand-ins for
umT5 and the Wan VAE); a 4-block DiT whose blocks after the first use the paper's attention
block: the mean of MoGA (4 groups, one routing per token), shot-aware STGA (2x2 windows) and
per-frame attention. Override any field on the command line, e.g. --config.train.steps=50.
"""

from ml_collections import ConfigDict

from moga_jax.train.config_files import load_config_module

base = load_config_module("base")


def get_config() -> ConfigDict:
  c = base.get_config(num_groups=4)  # the block, loss, loop knobs, mesh: see base.py

  c.data = ConfigDict()
  c.data.source_dir = ""  # folder of mp4s + captions.jsonl; "" = WORKDIR/../data/synthetic
  c.data.dataset_dir = ""  # prepared array_record dataset; "" = next to the source
  c.data.synthetic_videos = 256  # clips generated when source_dir has none
  c.data.shots = 2
  c.data.frames_per_shot = 8
  c.data.height = 32
  c.data.width = 32
  c.data.fps = 8
  c.data.fit = "crop"  # other aspect ratios: "crop" (cover, cut the centre), "pad", "stretch"
  c.data.allow_placeholder_captions = False  # train on shots moga_jax.data.shots left uncaptioned
  c.data.max_shots = 2
  c.data.caption_len = 48
  c.data.subject_scale = 0.3  # synthetic clips: the subject's radius / the frame's smaller side

  m = c.model
  m.latent_factor = 4  # space-to-depth: 32x32x3 pixels -> 8x8x48 latents
  # Wider than a token's 192 latent values (2x2 patches of 48 channels): a narrower model
  # cannot carry the noise through and its samples stay noisy (measured: plateau at 0.5 MSE).
  m.dim = 256
  m.ffn_dim = 512
  m.num_layers = 4
  m.num_heads = 4
  m.text_dim = 64
  m.text_layers = 2
  m.caption_len = c.data.get_ref("caption_len")
  m.dense_layers = (0,)

  c.train.steps = 800  # ~0.8 s a step on 2 cores
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 100

  c.sample.steps = 30
  c.sample.guidance = 3.0
  c.sample.solver = "euler"  # or "unipc" (Wan's multistep solver)
  return c
