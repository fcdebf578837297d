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
from flax import nnx
from ml_collections import config_flags
from tqdm import tqdm

from moga_jax import plots
from moga_jax.checkpoint import Checkpointer
from moga_jax.config_checks import validate_config
from moga_jax.data.pipeline import make_loader
from moga_jax.data.prepare import prepare_data
from moga_jax.model import TextToVideo
from moga_jax.training import make_optimizer, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).",
                               required=True)
_CRASH_AFTER = flags.DEFINE_integer(
    "crash_after_step", None, "Testing aid: SIGKILL this process after that step, as a crash "
    "would, without the save-on-exit.")


def data_state(loader) -> dict:
  """The loader's position as JSON (grain's DataLoader gives JSON bytes)."""
  state = loader.get_state()
  return {"grain_json": state.decode()} if isinstance(state, bytes) else {"grain": state}


def restore_data_state(loader, saved: dict) -> None:
  loader.set_state(saved["grain_json"].encode() if "grain_json" in saved else saved["grain"])


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
  validate_config(cfg)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset_dir = prepare_data(cfg.data, workdir)
  model = TextToVideo(cfg.model, rngs=nnx.Rngs(cfg.seed))
  optimizer = make_optimizer(model, cfg.train)
  loader = make_loader(dataset_dir, batch_size=cfg.train.batch_size, seed=cfg.seed,
                       shard_index=jax.process_index(), shard_count=jax.process_count())
  checkpoints = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
  model_config = cfg.model.to_dict()
  step = checkpoints.latest_step() or 0
  if step:
    restore_data_state(loader, checkpoints.restore((model, optimizer), model_config=model_config))
    logging.info("resumed from step %d", step)
  (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))

  train_step = make_train_step(cfg)
  root_key = jax.random.key(cfg.seed)
  log = MetricsLog(workdir, step)
  bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
  saved_at, last = step, time.perf_counter()
  try:
    while step < cfg.train.steps:
      batch = next(loader)
      metrics = train_step(model, optimizer, batch, jax.random.fold_in(root_key, step))
      step += 1
      metrics = {k: float(v) for k, v in metrics.items()}
      now = time.perf_counter()
      metrics["steps_per_s"] = 1.0 / max(now - last, 1e-9)
      last = now
      log.write(step, metrics)
      bar.update(1)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}", steps_s=f"{metrics['steps_per_s']:.1f}")
      if step % cfg.train.checkpoint_every == 0:
        checkpoints.save(step, (model, optimizer), data_state=data_state(loader),
                         model_config=model_config)
        saved_at = step
      if crash_after is not None and step >= crash_after:
        os.kill(os.getpid(), signal.SIGKILL)
  finally:
    bar.close()
    if step > saved_at:  # on exit, including Ctrl-C: nothing trained is lost
      checkpoints.save(step, (model, optimizer), data_state=data_state(loader),
                       model_config=model_config)
    checkpoints.close()
    log.close()
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
