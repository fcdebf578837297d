"""What keeps a long training run safe: preemption by SIGTERM, a diverged loss, user errors.

TPU pods and cluster schedulers preempt with SIGTERM and a grace period; `Preemption` turns it
into a flag the training loop reads between steps (it finishes the step, saves, exits 0), and
`preempted` makes the processes of a multi-host run agree on the step. A non-finite loss or
gradient stops the run with `NonFiniteError` before anything is saved, so the newest checkpoint
is always the last good state. `cli_main` prints user errors (moga_jax.errors.UserError: a bad
flag value, a missing folder, a malformed captions file) as one line without a traceback.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable

from moga_jax.cli import missing_extras_exit
from moga_jax.cli.logs import quiet_libraries
from moga_jax.errors import UserError

# Metrics that must stay finite; `skipped` marks a step whose update was dropped for them.
GUARDED = ("loss", "grad_norm")

# Errors a user causes with flags, configs and files, reported as one line (the checkpoint's
# ConfigMismatchError and UnreadableCheckpointError are UserErrors too). Anything else, a bare
# ValueError from jax or orbax included, is a bug and keeps its traceback.
USER_ERRORS = (UserError,)
EXIT_USER_ERROR, EXIT_NON_FINITE = 2, 3


class NonFiniteError(FloatingPointError):
  """A training step produced a non-finite loss or gradient norm."""


class Preemption:
  """SIGTERM (and the given signals) set `requested` instead of killing the process; the
  previous handlers come back on exit. Installed only from the main thread (Python's rule)."""

  def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)):
    self._signals, self._previous, self.requested = tuple(signals), {}, False

  def _handle(self, signum, frame) -> None:
    del frame
    self.requested = True
    print(
      f"\nreceived {signal.Signals(signum).name}: finishing this step, saving and exiting",
      file=sys.stderr,
      flush=True,
    )

  def __enter__(self) -> Preemption:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self._signals}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def preempted(preemption: Preemption, at_fetch: bool) -> bool:
  """Whether to save and stop now. One process stops as soon as it is signalled; several agree
  at fetch points (a signal may reach them at different steps; all must save the same step)."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  if jax.process_count() == 1:
    return preemption.requested
  if not at_fetch:
    return False
  flags = multihost_utils.process_allgather(np.int32(preemption.requested))
  return bool(np.asarray(flags).max())


def check_finite(rows: list[dict], *, skipped_so_far: int, max_skipped: int) -> int:
  """Checks fetched metric rows ({"step", "loss", "grad_norm", ...}) in step order; returns the
  number of skipped steps so far. Raises NonFiniteError naming the first bad step and quantity
  when its update was applied (no skipping) or when more than `max_skipped` were skipped."""
  for row in rows:
    bad = [q for q in GUARDED if q in row and not math.isfinite(row[q])]
    if not bad:
      continue
    what = " and ".join(f"{q} = {row[q]}" for q in bad)
    if not row.get("skipped"):
      raise NonFiniteError(
        f"step {row['step']}: non-finite {what}; stopped without saving it (the newest "
        "checkpoint is the last good state). Lower the learning rate, check the data, or set "
        "config.train.skip_nonfinite_steps to drop a few such steps"
      )
    skipped_so_far += 1
    if skipped_so_far > max_skipped:
      raise NonFiniteError(
        f"step {row['step']}: non-finite {what}: {skipped_so_far} non-finite steps, more than "
        f"config.train.skip_nonfinite_steps = {max_skipped}; stopped without saving it"
      )
  return skipped_so_far


def cli_main(main: Callable[[list[str]], None], program: str) -> Callable[[list[str]], None]:
  """Wraps an absl main: a user error prints `PROGRAM: error: message` and exits 2, a diverged
  run exits 3, a package of an extra that is not installed names the pip command and exits 2
  (moga_jax.cli); anything else (a bug) keeps its traceback. Libraries' INFO logs are dropped
  unless --verbosity asks for DEBUG (moga_jax.cli.logs)."""

  def run(argv: list[str]) -> None:
    quiet_libraries()
    try:
      with missing_extras_exit(program):
        main(argv)
    except (*USER_ERRORS, NonFiniteError) as e:
      if os.environ.get("MOGA_TRACEBACK"):
        raise
      print(f"{program}: error: {e}", file=sys.stderr)
      sys.exit(EXIT_NON_FINITE if isinstance(e, NonFiniteError) else EXIT_USER_ERROR)

  return run
