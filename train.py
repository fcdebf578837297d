"""Train a MoGA text-to-video model.

  python train.py --config configs/tiny.py --workdir runs/tiny [--config.train.steps=200 ...]

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
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

from moga_jax import plots
from moga_jax.checkpoint import Checkpointer
from moga_jax.config_checks import validate_config, validate_sharding
from moga_jax.data.pipeline import make_loader
from moga_jax.data.prepare import prepare_data
from moga_jax.sharding import ShardingRules, make_mesh, process_batch_slice
from moga_jax.training import init_train_state, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).",
                               required=True)
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


def train(cfg, workdir: Path, crash_after: int | None = None) -> Path:
  maybe_initialize_distributed(cfg)
  validate_config(cfg)
  mesh = make_mesh(validate_sharding(cfg, jax.device_count()))
  rules = ShardingRules.from_config(cfg.sharding.rules)
  primary = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  if primary:  # one process makes the data; the others wait, then find it ready
    prepare_data(cfg.data, workdir)
  multihost_utils.sync_global_devices("data prepared")
  dataset_dir = prepare_data(cfg.data, workdir)

  train_state = init_train_state(cfg, mesh, rules)
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
  if primary:
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))

  train_step = make_train_step(cfg, train_state)
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
  workdir = train(_CONFIG.value, Path(_WORKDIR.value), _CRASH_AFTER.value)
  print(f"checkpoints: {workdir / 'checkpoints'}\nmetrics: {workdir / 'metrics.jsonl'}\n"
        f"loss curve: {workdir / 'loss.png'}")


if __name__ == "__main__":
  app.run(main)
