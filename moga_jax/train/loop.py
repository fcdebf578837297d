"""The training loop: every run (moga-train, the reproduction) trains through `train`.

With a WORKDIR the run is resumable: it resumes from the newest readable checkpoint (the resumed
run logs exactly the losses an uninterrupted run would; an unreadable newer one is moved aside
with a warning), appends one JSON line per step to WORKDIR/metrics.jsonl and TensorBoard events
to WORKDIR/tensorboard, checkpoints in the background every `train.checkpoint_every` steps and on
exit, and draws WORKDIR/loss.png. SIGTERM (preemption) finishes the step, saves it and returns.
Without one (workdir=None: short runs whose result is what the caller records) it trains from
scratch in memory and writes nothing; SIGTERM then ends the process as usual.

Either way metrics stay on the devices until a fetch (every `train.log_every` steps, before every
save and hook, and at the end: no host sync per step), and a fetch checks them: a non-finite loss
or gradient norm raises NonFiniteError before anything is saved (`train.skip_nonfinite_steps` > 0
drops up to that many such steps instead). `Faults` makes the faults a long run meets happen at a
chosen step, for the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from moga_jax.data.pipeline import make_loader
from moga_jax.errors import ConfigError, UserError
from moga_jax.parallel.sharding import make_mesh, process_batch_slice
from moga_jax.train import plots
from moga_jax.train.checkpoint import Checkpointer
from moga_jax.train.metrics_log import MetricsLog
from moga_jax.train.run_config import RunConfig
from moga_jax.train.run_guard import Preemption, check_finite, preempted
from moga_jax.train.state import init_train_state, make_train_step, optimizer_layout


class Faults(NamedTuple):
  """Testing aids: the step after which to SIGKILL the process (once the last background save
  has landed, as a crash would, without the save-on-exit), the step after which to send it
  SIGTERM (as a scheduler preempting it would), and the step whose batch is filled with NaN (as
  a corrupt clip would); None: never."""

  crash_after: int | None = None
  term_after: int | None = None
  poison_at: int | None = None


NO_FAULTS = Faults()


@dataclasses.dataclass(frozen=True)
class Every:
  """A hook: fn(model, step, metrics) after every `steps`-th step and after the last one, with
  that step's fetched metrics (floats); with `at_start` also before the first step of this
  process (metrics {}). Its time is left out of TrainResult.step_s (probes are not training)."""

  steps: int
  fn: Callable[[nnx.Module, int, dict], None]
  at_start: bool = False

  def due(self, step: int, last: int) -> bool:
    return step % self.steps == 0 or step == last


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """Where a run stopped: its step, whether SIGTERM stopped it, its trained state, and the
  mean seconds per step after the first (the compile), hooks excluded (None: under 2 steps)."""

  workdir: Path | None
  step: int
  preempted: bool
  step_s: float | None
  graphdef: nnx.GraphDef
  state: nnx.State

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.state)[0]


def maybe_initialize_distributed(run: RunConfig) -> None:
  """jax.distributed.initialize() when the config or the environment asks for it."""
  d = run.distributed
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


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
  """A ValueError from the config checks (RunConfig.from_config_dict, validate_sharding) is a
  ConfigError: those checks exist to name a config value that cannot work."""
  try:
    yield
  except ValueError as e:
    if isinstance(e, UserError):
      raise
    raise ConfigError(str(e)) from e


def checked_config(cfg, pipeline, init: str | None):
  """(config, run): the pipeline's config for `init` (a ConfigDict: what the run records) and
  the same typed and validated for training."""
  cfg = pipeline.configure(cfg, init)
  with config_errors():
    run = RunConfig.from_config_dict(cfg)
  param_dtype = jnp.dtype(run.model.param_dtype).name
  if param_dtype != "float32":
    raise ConfigError(
      f"config.model.param_dtype={param_dtype!r} is for sampling: train in float32 "
      "(bfloat16 weights lose Adam's small updates below their resolution); a float32 "
      "checkpoint then samples with --config.model.param_dtype=bfloat16"
    )
  return cfg, run


def train(
  cfg,
  workdir: str | Path | None,
  pipeline,
  *,
  init: str | None = None,
  faults: Faults = NO_FAULTS,
  hooks: Sequence[Every] = (),
  devices: Sequence | None = None,
) -> TrainResult:
  """Trains `cfg` (config.train.steps steps) with `pipeline` (moga_jax.train.pipeline) on
  `devices` (default: all), starting from `init` (converted weights, Wan) unless WORKDIR has a
  checkpoint; see the module docstring. Returns where it stopped."""
  cfg, run = checked_config(cfg, pipeline, init)
  maybe_initialize_distributed(run)  # before anything asks JAX for its devices
  devices = jax.devices() if devices is None else list(devices)
  with config_errors():
    mesh_shape = run.validate_sharding(len(devices))
  mesh = make_mesh(mesh_shape, devices=devices)
  rules = run.sharding.rules
  persistent = workdir is not None
  workdir = Path(workdir) if persistent else None
  primary = jax.process_index() == 0
  if persistent:
    workdir.mkdir(parents=True, exist_ok=True)
  prepare = lambda: pipeline.prepare_data(run, workdir, init)
  if primary:  # one process makes the data; the others wait, then find it ready
    prepare()
  multihost_utils.sync_global_devices("data prepared")
  dataset_dir = prepare()

  train_state = init_train_state(run, mesh, rules)
  state = train_state.state
  shard_index, shard_count = process_batch_slice(mesh, rules, run.train.batch_size)
  loader = make_loader(
    dataset_dir,
    batch_size=run.train.batch_size // shard_count,
    seed=run.seed,
    shard_index=shard_index,
    shard_count=shard_count,
  )
  model_config, optimizer_config = run.model_dict(), optimizer_layout(run.train)
  checkpoints = (
    Checkpointer(workdir / "checkpoints", keep=run.train.keep_checkpoints) if persistent else None
  )
  step, resumed = 0, None
  if checkpoints is not None:
    try:
      resumed = checkpoints.restore_newest_readable(
        state, model_config=model_config, optimizer_config=optimizer_config
      )
    except BaseException:  # another run's config: release orbax's threads before raising
      checkpoints.close()
      raise
  if resumed is not None:
    # Every process takes the same number of batches, so the primary process's loader
    # position (the one orbax writes) is every process's.
    step, state, saved = resumed
    loader.set_state(saved["grain"])
    logging.info("resumed from step %d", step)
  elif init is not None:  # Adam's moments start at zero whatever the parameters
    model, optimizer = nnx.merge(train_state.graphdef, state)
    pipeline.init_weights(model, cfg, init)
    state = nnx.state((model, optimizer))
  if persistent and primary:
    (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))

  train_step = make_train_step(run, train_state, loss=pipeline.loss)
  to_global = lambda batch: jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(train_state.batch_sharding, x), batch
  )
  root_key = jax.random.key(run.seed)
  log = MetricsLog(workdir, step) if persistent and primary else None
  t = run.train
  bar = tqdm(
    total=t.steps,
    initial=step,
    desc="train",
    unit="step",
    dynamic_ncols=True,
    disable=not primary,
    leave=persistent,
  )
  log_every, max_skipped = t.log_every, t.skip_nonfinite_steps
  pending: list[tuple[int, dict]] = []
  last_row: dict = {}
  saved_at, skipped, healthy, stopped = step, 0, True, False
  window = (step, time.perf_counter())
  first_step, started, hook_s = step, None, 0.0

  def fetch() -> None:
    nonlocal pending, skipped, window, last_row
    if not pending:
      return
    rows = [{"step": s, **{k: float(v) for k, v in m.items()}} for s, m in jax.device_get(pending)]
    pending = []
    now = time.perf_counter()
    rate = (rows[-1]["step"] - window[0]) / max(now - window[1], 1e-9)
    window = (rows[-1]["step"], now)
    skipped = check_finite(rows, skipped_so_far=skipped, max_skipped=max_skipped)
    last_row = {k: v for k, v in rows[-1].items() if k != "step"}
    if log is not None:
      for row in rows:
        log.write(
          row["step"], {**{k: v for k, v in row.items() if k != "step"}, "steps_per_s": rate}
        )
    bar.update(len(rows))
    bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", steps_s=f"{rate:.2f}")

  def save() -> None:
    nonlocal saved_at
    fetch()  # raises on a non-finite step: a bad state is never written
    checkpoints.save(
      step,
      state,
      data_state={"grain": loader.get_state()},
      model_config=model_config,
      optimizer_config=optimizer_config,
    )
    saved_at = step

  def run_hooks(due: list[Every], metrics: dict) -> None:
    nonlocal hook_s
    if not due:
      return
    start = time.perf_counter()
    model = nnx.merge(train_state.graphdef, state)[0]
    for hook in due:
      hook.fn(model, step, metrics)
    hook_s += time.perf_counter() - start

  guard = Preemption() if persistent else contextlib.nullcontext()
  try:
    with jax.set_mesh(mesh), guard as preemption:
      run_hooks([h for h in hooks if h.at_start], {})
      while step < t.steps:
        batch = next(loader)
        if step + 1 == faults.poison_at:
          batch = {k: v * np.nan if k in ("video", "latents") else v for k, v in batch.items()}
        state, metrics = train_step(state, to_global(batch), jax.random.fold_in(root_key, step))
        step += 1
        if step == first_step + 1:  # the compile is over: time the steps from here
          jax.block_until_ready(state)
          started, hook_s = time.perf_counter(), 0.0
        pending.append((step, metrics))
        due = [h for h in hooks if h.due(step, t.steps)]
        at_fetch = step % log_every == 0 or step == t.steps or bool(due)
        if checkpoints is not None and step % t.checkpoint_every == 0:
          save()
        elif at_fetch:
          fetch()
        run_hooks(due, last_row)
        if step == faults.crash_after:  # once the background save has landed
          fetch()
          if checkpoints is not None:
            checkpoints.wait()
          os.kill(os.getpid(), signal.SIGKILL)
        if step == faults.term_after:
          os.kill(os.getpid(), signal.SIGTERM)
        if preemption is not None and preempted(preemption, at_fetch):
          save()
          stopped = True
          logging.warning("preempted: saved step %d in %s", step, checkpoints.directory)
          break
      fetch()
      jax.block_until_ready(state)
      ran = step - first_step
      step_s = (time.perf_counter() - started - hook_s) / (ran - 1) if ran > 1 else None
  except KeyboardInterrupt:
    raise  # Ctrl-C: the save below keeps what was trained (its fetch checks it first)
  except BaseException:
    healthy = False  # a save now could write the bad state; the newest checkpoint stays
    raise
  finally:
    bar.close()
    try:
      if checkpoints is not None and healthy and step > saved_at:  # nothing trained is lost
        save()
    finally:
      if checkpoints is not None:
        checkpoints.close()
      if log is not None:
        log.close()
  if log is not None:
    plots.loss_curve(log.path, workdir / "loss.png")
  return TrainResult(workdir, step, stopped, step_s, train_state.graphdef, state)
