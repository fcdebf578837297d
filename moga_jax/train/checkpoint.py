"""Orbax checkpoints of a training run: model + optimizer state, step, data-iterator state.

One directory per run, one subdirectory per saved step (the last `keep` kept), written in the
background while training goes on. The model's config is saved with every step so that loading
into a mismatched model fails with a message that names the differing fields instead of an
opaque shape error. A step that cannot be read (a truncated file, a half-copied folder) is
moved aside, never deleted, and resume falls back to the newest readable one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from moga_jax.errors import MissingInputError, UserError


class ConfigMismatchError(UserError, ValueError):
  """The checkpoint was trained with another model config (the message names the fields)."""


class UnreadableCheckpointError(UserError, OSError):
  """Checkpoints exist but none of them can be read."""


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


# Model-config fields (or sections, for every field under them) that change how the model
# computes or stores its parameters, not what they are: a run trained in bfloat16 samples in
# float32 and the other way round, a float32 checkpoint loads into bfloat16 parameters (cast),
# and kernel knobs and memory settings (remat, chunking) can be retuned for the machine that
# resumes or samples.
COMPUTE_ONLY = frozenset(
  {
    "dtype",
    "param_dtype",
    "remat",
    "ffn_token_chunk",
    "attention.implementation",
    "attention.kernel_options",
    "attention.head_chunk",
  }
)


def _compute_only(field: str) -> bool:
  return any(field == c or field.startswith(c + ".") for c in COMPUTE_ONLY)


def check_config(saved: dict, current: dict, where: str, what: str = "model") -> None:
  saved, current = _flatten(saved), _flatten(current)
  if what == "model":
    saved, current = (
      {k: v for k, v in d.items() if not _compute_only(k)} for d in (saved, current)
    )
  diffs = [
    f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
    for k in sorted(set(saved) | set(current))
    if saved.get(k) != current.get(k)
  ]
  if diffs:
    raise ConfigMismatchError(
      f"the checkpoint in {where} was trained with another {what} "
      "config; differing fields:\n  " + "\n  ".join(diffs)
    )


def _as_state(state: Any) -> nnx.State:
  return state if isinstance(state, nnx.State) else nnx.state(state)


class Checkpointer:
  def __init__(self, directory: str | Path, *, keep: int = 2):
    self.directory = Path(directory).absolute()
    self._keep = keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=self._keep, create=True, enable_async_checkpointing=True
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(
    self,
    step: int,
    state: Any,
    *,
    data_state: dict,
    model_config: dict,
    optimizer_config: dict | None = None,
  ) -> None:
    """state: an nnx.State, or an nnx graph node / tuple of them (model, optimizer).

    Every process calls this (multi-host); orbax writes each array's shards from the process
    that holds them and the JSON parts from the primary process.
    Returns once the arrays are copied off the devices; the files are written in the
    background (`wait` or `close` blocks until they are on disk).
    """
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_as_state(state)),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(
          {"step": step, "model_config": model_config, "optimizer_config": optimizer_config}
        ),
      ),
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_state(
    self,
    state: nnx.State,
    *,
    model_config: dict,
    step: int | None = None,
    optimizer_config: dict | None = None,
    partial: bool = False,
  ) -> tuple[nnx.State, dict]:
    """Reads `step` (default: latest) into arrays shaped, typed and sharded like `state`;
    returns (restored state, saved data state). The model config, and the optimizer settings
    that shape its state (EMA, accumulation) when both sides give them, must match. With
    partial=True `state` may be a subset of what was saved (say the weights without Adam's
    moments): only its leaves are read from disk."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise MissingInputError(f"no checkpoint in {self.directory}")
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    check_config(meta.meta["model_config"], model_config, str(self.directory))
    saved_optimizer = meta.meta.get("optimizer_config")
    if saved_optimizer is not None and optimizer_config is not None:
      check_config(saved_optimizer, optimizer_config, str(self.directory), what="optimizer")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    if partial:
      item = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      )
    else:
      item = ocp.args.StandardRestore(target)
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=item, data=ocp.args.JsonRestore())
    )
    new_state = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(restored.state))
    return new_state, restored.data

  def restore_newest_readable(
    self, state: nnx.State, *, model_config: dict, optimizer_config: dict | None = None
  ) -> tuple[int, nnx.State, dict] | None:
    """(step, state, data state) of the newest checkpoint that reads, or None without any.

    A newer step that fails to read is logged as a warning and renamed STEP.unreadable-TIME
    (kept for inspection; a later save of that step would otherwise collide with it). A model
    config mismatch is not a damaged file and is raised as it is.
    """
    unreadable = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored, data = self.restore_state(
          state, model_config=model_config, step=step, optimizer_config=optimizer_config
        )
      except ConfigMismatchError:
        raise
      except Exception as e:  # orbax raises many types for a damaged step
        logging.warning(
          "checkpoint %s cannot be read (%s: %s); trying an older one",
          self.directory / str(step),
          type(e).__name__,
          str(e)[:300],
        )
        unreadable.append(step)
        continue
      self._set_aside(unreadable)
      return step, restored, data
    if unreadable:
      raise UnreadableCheckpointError(
        f"no checkpoint in {self.directory} can be read (steps {sorted(unreadable)}); move "
        "them away to start afresh"
      )
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if not steps:
      return
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        bad = self.directory / str(step)
        aside = bad.with_name(f"{step}.unreadable-{stamp}")
        bad.rename(aside)
        logging.warning("moved the unreadable checkpoint %s to %s", bad, aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("unreadable checkpoints set aside")
    self._manager.close()
    self._manager = self._open()

  def close(self) -> None:
    """Waits for a background save to land, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
