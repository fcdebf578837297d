"""Train a MoGA text-to-video model, from scratch or fine-tuning converted Wan 2.1 weights.

  python train.py --config configs/tiny.py --workdir runs/tiny [--config.train.steps=200 ...]
  python train.py --config configs/wan1_3b_moga.py --init weights/wan1_3b_moga \
      --workdir runs/wan1_3b [--config.data.source_dir=my_clips ...]

Installed, the same is `moga-train` (`pip install 'moga-jax[train]'`; Wan configs also need the
`wan` extra, imported only for them). The checkout's train.py is a wrapper around this module.

With --init (configs with `pipeline = "wan"`: a Wan DiT) the DiT starts from the converted
transformer, MoGA replacing its full self-attention, and trains on latents and caption states
precomputed once with the converted VAE and umT5 (moga_jax.wan.latent_data).

The loop (moga_jax.train.loop) makes the synthetic data on first use when the config points at
none, resumes from the newest readable checkpoint in WORKDIR (the resumed run logs exactly the
losses an uninterrupted run would; an unreadable newer one is moved aside with a warning), shows
a progress bar, appends one JSON line per step to WORKDIR/metrics.jsonl (fetched every
`train.log_every` steps, so there is no host sync per step), writes TensorBoard events to
WORKDIR/tensorboard, checkpoints in the background every `train.checkpoint_every` steps and on
exit, and draws WORKDIR/loss.png.

Surviving a cluster: SIGTERM (preemption) finishes the step, saves and exits 0; a non-finite
loss or gradient norm stops with exit status 3 and a message naming the step, saving nothing
(`train.skip_nonfinite_steps` > 0 drops up to that many such steps instead); a user error (bad
config value, missing folder, malformed captions file: moga_jax.errors.UserError) prints one
line and exits 2 (MOGA_TRACEBACK=1 shows the traceback); any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags
from ml_collections import config_flags

from moga_jax.train import loop
from moga_jax.train.config_files import config_path
from moga_jax.train.pipeline import pipeline_for


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags, defined when it runs (moga_jax.cli), so that a test can run it
  in-process with its own FlagValues."""
  config_flags.DEFINE_config_file(
    "config", config_path("tiny"), "Training config.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, metrics).", required=True, flag_values=flag_values
  )
  flags.DEFINE_string(
    "init",
    None,
    "Converted Wan folder (python -m moga_jax.wan.convert) to fine-tune from; "
    "required by Wan configs (config.pipeline 'wan'). Ignored when WORKDIR has a checkpoint.",
    flag_values=flag_values,
  )
  # Testing aids: the faults a long run meets, made to happen at a chosen step (loop.Faults).
  flags.DEFINE_integer(
    "crash_after_step",
    None,
    "Testing aid: SIGKILL this process after that step (once the last "
    "background save has landed), as a crash would, without the save-on-exit.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "sigterm_after_step",
    None,
    "Testing aid: send this process SIGTERM after that step, as a scheduler preempting it would.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "poison_batch_at_step",
    None,
    "Testing aid: fill that step's batch with NaN, as a corrupt clip would.",
    flag_values=flag_values,
  )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
  del argv
  f = flag_values
  cfg = f.config
  faults = loop.Faults(f.crash_after_step, f.sigterm_after_step, f.poison_batch_at_step)
  workdir = Path(f.workdir)
  loop.train(cfg, workdir, pipeline_for(cfg), init=f.init, faults=faults)
  print(
    f"checkpoints: {workdir / 'checkpoints'}\nmetrics: {workdir / 'metrics.jsonl'}\n"
    f"loss curve: {workdir / 'loss.png'}"
  )
