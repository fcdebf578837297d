"""Train a MoGA text-to-video model, from scratch or fine-tuning converted Wan 2.1 weights.

  python train.py --config configs/tiny.py --workdir runs/tiny [--config.train.steps=200 ...]
  python train.py --config configs/wan1_3b_moga.py --init weights/wan1_3b_moga \
      --workdir runs/wan1_3b [--config.data.source_dir=my_clips ...]

With --init (configs with a `video` section: a Wan DiT) the DiT starts from the converted
transformer, MoGA replacing its full self-attention, and trains on latents and caption states
precomputed once with the converted VAE and umT5 (moga_jax.wan.latent_data).

Makes the synthetic data on first use when the config points at none, resumes from the latest
checkpoint in WORKDIR (the resumed run logs exactly the losses an uninterrupted run would),
shows a progress bar, appends one JSON line per step to WORKDIR/metrics.jsonl, writes
TensorBoard events to WORKDIR/tensorboard, checkpoints every `train.checkpoint_every` steps and
on exit, and draws WORKDIR/loss.png at the end.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import jax
from absl import app, flags, logging
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

from moga_jax import plots
from moga_jax.checkpoint import Checkpointer
from moga_jax.config_checks import validate_config, validate_sharding
from moga_jax.data.pipeline import make_loader
from moga_jax.data.prepare import prepare_data
from moga_jax.model import dit_from_config
from moga_jax.sharding import ShardingRules, make_mesh, process_batch_slice
from moga_jax.training import (
  init_train_state,
  latent_loss_fn,
  loss_fn,
  make_optimizer,
  make_train_step,
)
from moga_jax.wan.converted import restore_dit
from moga_jax.wan.latent_data import prepare_latents

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).",
                               required=True)
_INIT = flags.DEFINE_string(
    "init", None, "Converted Wan folder (python -m moga_jax.convert_wan) to fine-tune from; "
    "required by configs with a `video` section. Ignored when WORKDIR has a checkpoint.")
_CRASH_AFTER = flags.DEFINE_integer(
    "crash_after_step", None, "Testing aid: SIGKILL this process after that step, as a crash "
    "would, without the save-on-exit.")


def data_state(loader) -> dict:
  """The loader's position as JSON. Every process takes the same number of batches, so the
  primary process's position (the one orbax writes) is every process's."""
  return {"grain": loader.get_state()}


def restore_data_state(loader, saved: dict) -> None:
  loader.set_state(saved["grain"])


def maybe_initialize_distributed(cfg) -> None:
  """jax.distributed.initialize() when the config or the environment asks for it."""
  d = cfg.distributed
  if not (d.initialize or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  jax.distributed.initialize(
      coordinator_address=d.coordinator_address or None,
      num_processes=d.num_processes or None,
      process_id=None if d.process_id < 0 else d.process_id)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


class MetricsLog:
  """WORKDIR/metrics.jsonl (one line per step) and TensorBoard events."""

  def __init__(self, workdir: Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    # Steps after the checkpoint we resume from will be recomputed: drop their old lines.
    if self.path.exists():
      lines = [ln for ln in self.path.read_text().splitlines()
               if ln.strip() and json.loads(ln)["step"] <= resume_step]
      self.path.write_text("".join(ln + "\n" for ln in lines))
    self._file = self.path.open("a")
    from tensorboardX import SummaryWriter

    self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    self._file.write(json.dumps({"step": step, **metrics}) + "\n")
    self._file.flush()
    for name, value in metrics.items():
      self._tb.add_scalar(f"train/{name}", value, step)

  def close(self) -> None:
    self._file.close()
    self._tb.close()


def _wan_setup(cfg, workdir: Path, init: str | None, rules: ShardingRules):
  """(prepare data, build model + optimizer, loss) for a Wan DiT fine-tuned from `init`."""
  if init is None:
    raise ValueError("configs with a `video` section train a Wan DiT on precomputed latents: "
                     "pass --init DIR, a folder written by `python -m moga_jax.convert_wan`")

  def build():
    dit = dit_from_config(cfg.model, rules=rules, rngs=nnx.Rngs(cfg.seed))
    return dit, make_optimizer(dit, cfg.train)

  return lambda: prepare_latents(cfg, workdir, init), build, latent_loss_fn


def train(cfg, workdir: Path, crash_after: int | None = None, init: str | None = None) -> Path:
  maybe_initialize_distributed(cfg)
  validate_config(cfg)
  mesh = make_mesh(validate_sharding(cfg, jax.device_count()))
  rules = ShardingRules.from_config(cfg.sharding.rules)
  primary = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  if "video" in cfg:
    prepare, build, loss = _wan_setup(cfg, workdir, init, rules)
  elif init is not None:
    raise ValueError(f"--init {init}: only configs with a `video` section (a Wan DiT, e.g. "
                     "configs/wan1_3b_moga.py) start from converted Wan weights")
  else:
    prepare, build, loss = lambda: prepare_data(cfg.data, workdir), None, loss_fn
  if primary:  # one process makes the data; the others wait, then find it ready
    prepare()
  multihost_utils.sync_global_devices("data prepared")
  dataset_dir = prepare()

  train_state = init_train_state(cfg, mesh, rules, build=build)
  state = train_state.state
  shard_index, shard_count = process_batch_slice(mesh, rules, cfg.train.batch_size)
  loader = make_loader(dataset_dir, batch_size=cfg.train.batch_size // shard_count,
                       seed=cfg.seed, shard_index=shard_index, shard_count=shard_count)
  checkpoints = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
  model_config = cfg.model.to_dict()
  step = checkpoints.latest_step() or 0
  if step:
    state, saved = checkpoints.restore_state(state, model_config=model_config)
    restore_data_state(loader, saved)
    logging.info("resumed from step %d", step)
  elif init is not None:  # Adam's moments start at zero whatever the parameters
    model, optimizer = train_state.merge()
    restore_dit(init, model, cfg.model)
    state = nnx.state((model, optimizer))
  if primary:
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))

  train_step = make_train_step(cfg, train_state, loss=loss)
  to_global = lambda batch: jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(train_state.batch_sharding, x), batch)
  root_key = jax.random.key(cfg.seed)
  log = MetricsLog(workdir, step) if primary else None
  bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
             disable=not primary)
  saved_at, last = step, time.perf_counter()
  save = lambda: checkpoints.save(step, state, data_state=data_state(loader),
                                  model_config=model_config)
  try:
    with jax.set_mesh(mesh):
      while step < cfg.train.steps:
        batch = to_global(next(loader))
        state, metrics = train_step(state, batch, jax.random.fold_in(root_key, step))
        step += 1
        metrics = {k: float(v) for k, v in metrics.items()}
        now = time.perf_counter()
        metrics["steps_per_s"] = 1.0 / max(now - last, 1e-9)
        last = now
        if log is not None:
          log.write(step, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{metrics['steps_per_s']:.1f}")
        if step % cfg.train.checkpoint_every == 0:
          save()
          saved_at = step
        if crash_after is not None and step >= crash_after:
          os.kill(os.getpid(), signal.SIGKILL)
  finally:
    bar.close()
    if step > saved_at:  # on exit, including Ctrl-C: nothing trained is lost
      save()
    checkpoints.close()
    if log is not None:
      log.close()
  if primary:
    plots.loss_curve(log.path, workdir / "loss.png")
  return workdir


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  workdir = train(_CONFIG.value, Path(_WORKDIR.value), _CRASH_AFTER.value, _INIT.value)
  print(f"checkpoints: {workdir / 'checkpoints'}\nmetrics: {workdir / 'metrics.jsonl'}\n"
        f"loss curve: {workdir / 'loss.png'}")


if __name__ == "__main__":
  app.run(main)
