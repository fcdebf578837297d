"""Running a command's main in-process, as its console script would but without a new Python:
its own absl FlagValues (so commands sharing flag names like --config can run in one process),
through run_guard.cli_main (user errors as one line, exit 2), stdout and stderr captured.

A subprocess per CLI proves the entry point; the rest of a command's behaviour is tested here.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import sys
from typing import NamedTuple
from unittest import mock

from absl import flags

from moga_jax.train.run_guard import cli_main


class Outcome(NamedTuple):
  code: int  # the SystemExit code; 0 when main returned
  out: str
  err: str


def run_command(
  module_name: str, program: str, argv: list[str], define: str = "define_flags"
) -> Outcome:
  """Defines the module's flags (its `define(flag_values)`) on a fresh FlagValues, parses
  [program, *argv] and runs `main(argv, flag_values=...)` through cli_main. An exception that
  cli_main lets through (a bug) propagates to the test."""
  module = importlib.import_module(module_name)
  flag_values = flags.FlagValues()
  getattr(module, define)(flag_values)
  full = [program, *argv]
  out, err = io.StringIO(), io.StringIO()
  code = 0
  # ml_collections reads --config.x overrides from sys.argv.
  with (
    mock.patch.object(sys, "argv", full),
    contextlib.redirect_stdout(out),
    contextlib.redirect_stderr(err),
  ):
    try:
      rest = flag_values(full)
      cli_main(functools.partial(module.main, flag_values=flag_values), program)(rest)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
  return Outcome(code, out.getvalue(), err.getvalue())
