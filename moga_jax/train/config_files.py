"""Where the named configs live, and how one config file builds on another.

The configs are Python files in the repository's top-level `configs/` folder. An installed wheel
carries the same files as `moga_jax/configs/` (package data), so `pip install` puts no package
named `configs` on anyone's path. The programs take `--config PATH[:preset]`; their default
paths come from here, not from the working directory, so `python -m moga_jax.tools.plan` works from
any folder.

A config file that builds on another loads it with `load_config_module("wan1_3b_moga")`; so
can a user's own config outside this repository.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from moga_jax.errors import MissingInputError

_PACKAGE = Path(__file__).resolve().parents[1]  # the moga_jax package
_MODULE_PREFIX = "moga_jax_config_files."


def config_dir() -> Path:
  """The folder of the named configs: moga_jax/configs in an installed wheel, else the
  repository's top-level configs/ (a checkout, or an editable install)."""
  for folder in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
    if (folder / "tiny.py").is_file():
      return folder
  raise MissingInputError(
    f"no configs folder beside {_PACKAGE} (looked for configs/tiny.py in {_PACKAGE} and its "
    "parent): reinstall moga-jax, or pass --config with a path"
  )


def config_path(name: str) -> str:
  """The path of a named config ("tiny" or "tiny.py"), for a `--config` flag's default."""
  path = config_dir() / (name if name.endswith(".py") else f"{name}.py")
  if not path.is_file():
    known = ", ".join(sorted(p.stem for p in config_dir().glob("*.py") if p.stem != "__init__"))
    raise MissingInputError(f"no config named {name!r} in {config_dir()}; known: {known}")
  return str(path)


def load_config_module(name: str) -> ModuleType:
  """The named config file as a module, loaded once per process by its path."""
  module_name = _MODULE_PREFIX + name.removesuffix(".py")
  if module_name not in sys.modules:
    spec = importlib.util.spec_from_file_location(module_name, config_path(name))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[module_name]
      raise
  return sys.modules[module_name]
