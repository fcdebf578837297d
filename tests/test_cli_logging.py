"""--verbosity is the user's: the programs' own INFO lines show, the libraries' only at DEBUG."""

from __future__ import annotations

import logging as std_logging
import subprocess
import sys
import textwrap
from pathlib import Path

import orbax.checkpoint
import pytest
from absl import logging

from moga_jax.cli import logs as cli_logging

ROOT = Path(__file__).parents[1]


def _record(path: str, level: int) -> std_logging.LogRecord:
  return std_logging.LogRecord("absl", level, path, 1, "message", None, None)


@pytest.fixture
def verbosity():
  before = logging.get_verbosity()
  yield logging.set_verbosity
  logging.set_verbosity(before)


def test_library_info_is_dropped_until_debug(verbosity):
  quiet = cli_logging.QuietLibraries()
  orbax_file = str(Path(orbax.checkpoint.__file__).parent / "checkpointer.py")
  ours = str(ROOT / "train.py")
  verbosity(logging.INFO)
  assert not quiet.filter(_record(orbax_file, std_logging.INFO))
  assert quiet.filter(_record(orbax_file, std_logging.WARNING))
  assert quiet.filter(_record(ours, std_logging.INFO))
  verbosity(logging.DEBUG)
  assert quiet.filter(_record(orbax_file, std_logging.INFO))


@pytest.mark.subprocess
def test_a_program_honours_verbosity(tmp_path):
  """A cli_main program: INFO from its own code shows by default and goes at --verbosity=-1;
  INFO logged from inside orbax's package shows only at --verbosity=1."""
  program = tmp_path / "program.py"
  program.write_text(
    textwrap.dedent("""
      from absl import app, logging
      import orbax.checkpoint as inside_orbax
      from moga_jax.train.run_guard import cli_main

      def main(argv):
        logging.info("our line")
        # A record whose source file is orbax's, as orbax's own logging.info calls make.
        exec(compile('logging.info("orbax line")', inside_orbax.__file__, "exec"),
             {"logging": logging})

      app.run(cli_main(main, "program"))
  """)
  )
  lines = {}
  for flag in ("--verbosity=-1", "--verbosity=0", "--verbosity=1"):
    done = subprocess.run(
      [sys.executable, str(program), flag], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines[flag] = ("our line" in done.stderr, "orbax line" in done.stderr)
  assert lines == {
    "--verbosity=-1": (False, False),
    "--verbosity=0": (True, False),
    "--verbosity=1": (True, True),
  }
