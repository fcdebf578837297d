"""The installed commands (`[project.scripts]` in pyproject.toml) and what they share.

  moga-train         train.py                          needs the `train` extra
  moga-sample        sample.py                         `train`; Wan configs also `wan`
  moga-plan          python -m moga_jax.tools.plan     `train`
  moga-convert-wan   python -m moga_jax.wan.convert    `train`, `wan`
  moga-export        python -m moga_jax.wan.export     `train`, `wan`
  moga-shots         python -m moga_jax.data.shots     `shots`

`pip install moga-jax` installs the module layer only (jax and flax: `MoGAAttention`, `VideoDiT`,
the routing, the kernels); the commands need extras. A command whose extra is not installed
prints one line naming the pip command and exits 2, whether the missing package is imported
when the command starts or later (PySceneDetect is imported at the first video).

This module imports nothing outside the standard library until a command runs: the library's
`import moga_jax` never comes here, and run_guard imports it for `missing_extra_line`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterator

__all__ = [
  "EXIT_MISSING_EXTRA",
  "EXTRA_OF_MODULE",
  "convert_wan_command",
  "export_command",
  "guard_extras",
  "missing_extra_line",
  "missing_extras_exit",
  "plan_command",
  "sample_command",
  "shots_command",
  "train_command",
]

# Top-level import names -> the extra that installs them (pyproject.toml).
EXTRA_OF_MODULE = {
  "optax": "train",
  "orbax": "train",
  "tensorflow_datasets": "train",
  "grain": "train",
  "array_record": "train",
  "ml_collections": "train",
  "av": "train",
  "PIL": "train",
  "tqdm": "train",
  "tensorboardX": "train",
  "matplotlib": "train",
  "tokenizers": "wan",
  "einops": "wan",
  "huggingface_hub": "wan",
  "safetensors": "wan",
  "scenedetect": "shots",
}
# Extras that install others (pyproject.toml): a command needing `shots` names it, not `train`.
EXTRAS_INCLUDED = {"shots": ("train", "shots")}
EXIT_MISSING_EXTRA = 2  # the exit status of a user error (moga_jax.train.run_guard)


def missing_extra_line(
  program: str, error: ImportError, command_extra: str | None = None
) -> str | None:
  """The one line for an ImportError of a package an extra installs; None for any other (a
  bug, or a package no extra names: its traceback stays). `command_extra`: the extra the
  command needs, named instead when it includes the package's."""
  module = (error.name or "").partition(".")[0]
  extra = EXTRA_OF_MODULE.get(module)
  if extra is None:
    return None
  if command_extra is not None and extra in EXTRAS_INCLUDED.get(command_extra, (command_extra,)):
    extra = command_extra
  return (
    f"{program}: error: {module} is not installed; this command needs the `{extra}` extra: "
    f"pip install 'moga-jax[{extra}]'"
  )


@contextlib.contextmanager
def missing_extras_exit(program: str, command_extra: str | None = None) -> Iterator[None]:
  """An ImportError of a package an extra installs, raised inside, prints missing_extra_line
  and exits 2 (MOGA_TRACEBACK=1 keeps the traceback)."""
  try:
    yield
  except ImportError as e:
    line = missing_extra_line(program, e, command_extra)
    if line is None or os.environ.get("MOGA_TRACEBACK"):
      raise
    print(line, file=sys.stderr)
    sys.exit(EXIT_MISSING_EXTRA)


def guard_extras(main: Callable[[list[str]], None], program: str) -> Callable[[list[str]], None]:
  """An absl main whose missing extras exit as missing_extras_exit says."""

  @functools.wraps(main)
  def run(argv: list[str]) -> None:
    with missing_extras_exit(program):
      main(argv)

  return run


def _run(
  module_name: str,
  program: str,
  *,
  extra: str | None = None,
  user_errors: bool = True,
  define_flags: str | None = None,
) -> None:
  """Imports the command's module (a missing extra: one line, exit 2; `extra` names the one the
  command needs when it includes the missing package's), makes its flags the ones --help shows
  for this program, and runs its `main` through absl: with moga_jax.train.run_guard's cli_main (user
  errors as one line) when `user_errors`, else with the extras guard alone."""
  with missing_extras_exit(program, extra):
    module = importlib.import_module(module_name)
    from absl import app, flags

    from moga_jax.train.run_guard import cli_main
  if define_flags is not None:
    getattr(module, define_flags)()
  # absl's --help lists the flags of the module named by sys.argv[0] (this wrapper's file, or
  # the console script): make the command's own flags that module's key flags.
  for flag in flags.FLAGS.get_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  main = cli_main(module.main, program) if user_errors else guard_extras(module.main, program)
  app.run(main)


def train_command(program: str = "moga-train") -> None:
  _run("moga_jax.cli.train", program, define_flags="define_flags")


def sample_command(program: str = "moga-sample") -> None:
  _run("moga_jax.cli.sample", program, define_flags="define_flags")


def plan_command(program: str = "moga-plan") -> None:
  _run("moga_jax.tools.plan", program, user_errors=False)


def convert_wan_command(program: str = "moga-convert-wan") -> None:
  _run("moga_jax.wan.convert", program, define_flags="_define_flags")


def export_command(program: str = "moga-export") -> None:
  _run("moga_jax.wan.export", program)


def shots_command(program: str = "moga-shots") -> None:
  _run("moga_jax.data.shots", program, extra="shots", define_flags="_define_flags")
