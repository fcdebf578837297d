"""Train a MoGA text-to-video model, from scratch or fine-tuning converted Wan 2.1 weights.

  python train.py --config configs/tiny.py --workdir runs/tiny [--config.train.steps=200 ...]
  python train.py --config configs/wan1_3b_moga.py --init weights/wan1_3b_moga \
      --workdir runs/wan1_3b [--config.data.source_dir=my_clips ...]

Installed, the same is `moga-train` (`pip install 'moga-jax[train]'`; Wan configs also need the
`wan` extra, imported only for them). The checkout's train.py is a wrapper around this module.

With --init (configs with a `video` section: a Wan DiT) the DiT starts from the converted
transformer, MoGA replacing its full self-attention, and trains on latents and caption states
precomputed once with the converted VAE and umT5 (moga_jax.wan.latent_data).

Makes the synthetic data on first use when the config points at none, resumes from the newest
readable checkpoint in WORKDIR (the resumed run logs exactly the losses an uninterrupted run
would; an unreadable newer one is moved aside with a warning), shows a progress bar, appends one
JSON line per step to WORKDIR/metrics.jsonl (fetched every `train.log_every` steps, so there is
no host sync per step), writes TensorBoard events to WORKDIR/tensorboard, checkpoints in the
background every `train.checkpoint_every` steps and on exit, and draws WORKDIR/loss.png.

Surviving a cluster: SIGTERM (preemption) finishes the step, saves and exits 0; a non-finite
loss or gradient norm stops with exit status 3 and a message naming the step, saving nothing
(`train.skip_nonfinite_steps` > 0 drops up to that many such steps instead); a user error (bad
config value, missing folder, malformed captions file) prints one line and exits 2
(MOGA_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from absl import flags, logging
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import config_flags
from tqdm import tqdm

from moga_jax.data.pipeline import make_loader
from moga_jax.data.prepare import prepare_data
from moga_jax.parallel.sharding import ShardingRules, make_mesh, process_batch_slice
from moga_jax.train import plots
from moga_jax.train.checkpoint import Checkpointer
from moga_jax.train.config_checks import validate_config, validate_sharding
from moga_jax.train.config_files import config_path
from moga_jax.train.run_guard import Preemption, check_finite
from moga_jax.train.state import (
  init_train_state,
  latent_loss_fn,
  loss_fn,
  make_train_step,
  optimizer_layout,
)

_CONFIG = config_flags.DEFINE_config_file("config", config_path("tiny"), "Training config.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (checkpoints, metrics).", required=True
)
_INIT = flags.DEFINE_string(
  "init",
  None,
  "Converted Wan folder (python -m moga_jax.wan.convert) to fine-tune from; "
  "required by configs with a `video` section. Ignored when WORKDIR has a checkpoint.",
)
# Testing aids: the faults a long run meets, made to happen at a chosen step.
_CRASH_AFTER = flags.DEFINE_integer(
  "crash_after_step",
  None,
  "Testing aid: SIGKILL this process after that step (once the last "
  "background save has landed), as a crash would, without the save-on-exit.",
)
_TERM_AFTER = flags.DEFINE_integer(
  "sigterm_after_step",
  None,
  "Testing aid: send this process SIGTERM after that step, as a scheduler preempting it would.",
)
_POISON_STEP = flags.DEFINE_integer(
  "poison_batch_at_step",
  None,
  "Testing aid: fill that step's batch with NaN, as a corrupt clip would.",
)


class Faults(NamedTuple):
  """Testing aids (see the flags): steps after which to crash or be preempted, and the step
  whose batch is poisoned; None: never."""

  crash_after: int | None = None
  term_after: int | None = None
  poison_at: int | None = None


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
    process_id=None if d.process_id < 0 else d.process_id,
  )
  logging.info(
    "process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


class MetricsLog:
  """WORKDIR/metrics.jsonl (one line per step) and TensorBoard events."""

  def __init__(self, workdir: Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    # Steps after the checkpoint we resume from will be recomputed: drop their old lines.
    if self.path.exists():
      lines = [
        ln
        for ln in self.path.read_text().splitlines()
        if ln.strip() and json.loads(ln)["step"] <= resume_step
      ]
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


def _wan_setup(cfg, workdir: Path, init: str | None):
  """(prepare data, loss) for a Wan DiT fine-tuned from `init`."""
  if init is None:
    raise ValueError(
      "configs with a `video` section train a Wan DiT on precomputed latents: "
      "pass --init DIR, a folder written by `python -m moga_jax.wan.convert`"
    )
  from moga_jax.wan.latent_data import prepare_latents  # the `wan` extra: Wan configs only

  return lambda: prepare_latents(cfg, workdir, init), latent_loss_fn


def preempted(preemption: Preemption, at_fetch: bool) -> bool:
  """Whether to save and stop now. One process stops as soon as it is signalled; several agree
  at fetch points (a signal may reach them at different steps; all must save the same step)."""
  if jax.process_count() == 1:
    return preemption.requested
  if not at_fetch:
    return False
  flags_ = multihost_utils.process_allgather(np.int32(preemption.requested))
  return bool(np.asarray(flags_).max())


def train(cfg, workdir: Path, init: str | None = None, faults: Faults | None = None) -> Path:
  faults = faults or Faults()
  maybe_initialize_distributed(cfg)
  if init is not None and "video" in cfg:  # the DiT's widths are the converted checkpoint's
    from moga_jax.wan.converted_folder import with_converted_widths

    cfg = with_converted_widths(cfg, init)
  validate_config(cfg)
  if cfg.model.get("param_dtype", "float32") != "float32":
    raise ValueError(
      f"config.model.param_dtype={cfg.model.param_dtype!r} is for sampling: train in float32 "
      "(bfloat16 weights lose Adam's small updates below their resolution); a float32 "
      "checkpoint then samples with --config.model.param_dtype=bfloat16"
    )
  mesh = make_mesh(validate_sharding(cfg, jax.device_count()))
  rules = ShardingRules.from_config(cfg.sharding.rules)
  primary = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  if "video" in cfg:
    prepare, loss = _wan_setup(cfg, workdir, init)
  elif init is not None:
    raise ValueError(
      f"--init {init}: only configs with a `video` section (a Wan DiT, e.g. "
      "configs/wan1_3b_moga.py) start from converted Wan weights"
    )
  else:
    prepare, loss = lambda: prepare_data(cfg.data, workdir), loss_fn
  if primary:  # one process makes the data; the others wait, then find it ready
    prepare()
  multihost_utils.sync_global_devices("data prepared")
  dataset_dir = prepare()

  train_state = init_train_state(cfg, mesh, rules)
  state = train_state.state
  shard_index, shard_count = process_batch_slice(mesh, rules, cfg.train.batch_size)
  loader = make_loader(
    dataset_dir,
    batch_size=cfg.train.batch_size // shard_count,
    seed=cfg.seed,
    shard_index=shard_index,
    shard_count=shard_count,
  )
  checkpoints = Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints)
  model_config = cfg.model.to_dict()
  step = 0
  optimizer_config = optimizer_layout(cfg.train)
  resumed = checkpoints.restore_newest_readable(
    state, model_config=model_config, optimizer_config=optimizer_config
  )
  if resumed is not None:
    step, state, saved = resumed
    restore_data_state(loader, saved)
    logging.info("resumed from step %d", step)
  elif init is not None:  # Adam's moments start at zero whatever the parameters
    from moga_jax.wan.converted_folder import restore_dit

    model, optimizer = train_state.merge()
    restore_dit(init, model, cfg.model)
    state = nnx.state((model, optimizer))
  if primary:
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))

  train_step = make_train_step(cfg, train_state, loss=loss)
  to_global = lambda batch: jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(train_state.batch_sharding, x), batch
  )
  root_key = jax.random.key(cfg.seed)
  log = MetricsLog(workdir, step) if primary else None
  bar = tqdm(
    total=cfg.train.steps,
    initial=step,
    desc="train",
    unit="step",
    dynamic_ncols=True,
    disable=not primary,
  )
  t = cfg.train
  log_every, max_skipped = t.get("log_every", 1), t.get("skip_nonfinite_steps", 0)
  # Metrics stay on the devices until a fetch (every log_every steps, before every save and at
  # the end): no host sync per step. A fetch checks them before anything is saved.
  pending: list[tuple[int, dict]] = []
  saved_at, skipped, healthy = step, 0, True
  window = (step, time.perf_counter())

  def fetch() -> None:
    nonlocal pending, skipped, window
    if not pending:
      return
    rows = [{"step": s, **{k: float(v) for k, v in m.items()}} for s, m in jax.device_get(pending)]
    pending = []
    now = time.perf_counter()
    rate = (rows[-1]["step"] - window[0]) / max(now - window[1], 1e-9)
    window = (rows[-1]["step"], now)
    skipped = check_finite(rows, skipped_so_far=skipped, max_skipped=max_skipped)
    if log is not None:
      for row in rows:
        log.write(row.pop("step"), {**row, "steps_per_s": rate})
    bar.update(len(rows))
    bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", steps_s=f"{rate:.2f}")

  def save() -> None:
    nonlocal saved_at
    fetch()  # raises on a non-finite step: a bad state is never written
    checkpoints.save(
      step,
      state,
      data_state=data_state(loader),
      model_config=model_config,
      optimizer_config=optimizer_config,
    )
    saved_at = step

  try:
    with jax.set_mesh(mesh), Preemption() as preemption:
      while step < t.steps:
        batch = next(loader)
        if step + 1 == faults.poison_at:
          batch = {k: v * np.nan if k in ("video", "latents") else v for k, v in batch.items()}
        state, metrics = train_step(state, to_global(batch), jax.random.fold_in(root_key, step))
        step += 1
        pending.append((step, metrics))
        at_fetch = step % log_every == 0 or step == t.steps
        if step % t.checkpoint_every == 0:
          save()
        elif at_fetch:
          fetch()
        if step == faults.crash_after:  # once the background save has landed
          fetch()
          checkpoints.wait()
          os.kill(os.getpid(), signal.SIGKILL)
        if step == faults.term_after:
          os.kill(os.getpid(), signal.SIGTERM)
        if preempted(preemption, at_fetch):
          save()
          logging.warning("preempted: saved step %d in %s", step, checkpoints.directory)
          break
  except KeyboardInterrupt:
    raise  # Ctrl-C: the save below keeps what was trained (its fetch checks it first)
  except BaseException:
    healthy = False  # a save now could write the bad state; the newest checkpoint stays
    raise
  finally:
    bar.close()
    try:
      if healthy and step > saved_at:  # on normal exit (and Ctrl-C below) nothing is lost
        save()
    finally:
      checkpoints.close()
      if log is not None:
        log.close()
  if primary:
    plots.loss_curve(log.path, workdir / "loss.png")
  return workdir


def main(argv):
  del argv
  faults = Faults(_CRASH_AFTER.value, _TERM_AFTER.value, _POISON_STEP.value)
  workdir = train(_CONFIG.value, Path(_WORKDIR.value), _INIT.value, faults)
  print(
    f"checkpoints: {workdir / 'checkpoints'}\nmetrics: {workdir / 'metrics.jsonl'}\n"
    f"loss curve: {workdir / 'loss.png'}"
  )
