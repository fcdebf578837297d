"""Logging for the command-line programs: `--verbosity` is the user's, libraries stay quiet.

absl's default verbosity (0, INFO) shows this project's INFO lines; the libraries' INFO lines
(orbax names every array it saves, jax every backend it cannot find) are dropped unless the
user asks for DEBUG (`--verbosity=1`). Warnings always show. orbax logs through absl's own
logger, so a record is told apart by the package its source file lives in, not by a logger name.
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os

from absl import logging

CHATTY_PACKAGES = (
  "orbax",
  "jax",
  "jaxlib",
  "flax",
  "grain",
  "etils",
  "tensorflow_datasets",
  "array_record",
  "absl",
)


def _package_dirs(names) -> tuple[str, ...]:
  dirs = []
  for name in names:
    spec = importlib.util.find_spec(name)
    for location in (spec.submodule_search_locations or []) if spec else []:
      dirs.append(os.path.join(os.path.realpath(location), ""))
  return tuple(dirs)


class QuietLibraries(std_logging.Filter):
  """Drops records below WARNING from the given packages while absl's verbosity is INFO or
  quieter; at DEBUG (`--verbosity=1` or more) everything passes."""

  def __init__(self, packages=CHATTY_PACKAGES):
    super().__init__()
    self.dirs = _package_dirs(packages)

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING or logging.get_verbosity() >= 1:
      return True
    return not os.path.realpath(record.pathname).startswith(self.dirs)


def quiet_libraries() -> None:
  """Installs QuietLibraries on absl's handler, once per process (call from a program's main)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())
