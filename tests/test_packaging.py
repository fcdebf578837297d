"""What `pip install` ships: the listed packages, the configs as moga_jax/configs (no top-level
`configs` package), and default config paths that do not depend on the working directory."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from moga_jax import config_files

ROOT = Path(__file__).parents[1]


def _setuptools() -> dict:
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_package_list_matches_the_tree():
  found = {
    ".".join(p.parent.relative_to(ROOT).parts)
    for top in ("moga_jax", "pallas_kernels")
    for p in (ROOT / top).rglob("__init__.py")
  }
  listed = set(_setuptools()["packages"])
  assert listed == found | {"moga_jax.configs"}, "update [tool.setuptools] packages"
  assert "configs" not in listed
  assert _setuptools()["package-dir"] == {"moga_jax.configs": "configs"}


def test_no_installed_module_imports_a_configs_package():
  """Code that ships (and the configs themselves) loads configs by path, never as `configs`."""
  files = [
    *ROOT.glob("moga_jax/**/*.py"),
    *ROOT.glob("pallas_kernels/**/*.py"),
    *ROOT.glob("configs/*.py"),
    ROOT / "train.py",
    ROOT / "sample.py",
  ]
  offenders = [
    str(f.relative_to(ROOT))
    for f in files
    if re.search(r"^\s*(from configs\b|import configs\b)", f.read_text(), re.M)
  ]
  assert not offenders


def test_named_configs_resolve_from_the_package():
  path = Path(config_files.config_path("tiny"))
  assert path.is_absolute() and path == (ROOT / "configs" / "tiny.py").resolve()
  assert config_files.config_path("tiny.py") == str(path)
  with pytest.raises(FileNotFoundError, match=r"no config named 'tiy'.*known: .*tiny"):
    config_files.config_path("tiy")
  module = config_files.load_config_module("wan14b_moga_580k")
  assert module is config_files.load_config_module("wan14b_moga_580k.py")
  assert module.get_config().video.frames > 0


def test_a_program_finds_its_default_config_from_any_folder(tmp_path):
  done = subprocess.run(
    [sys.executable, "-m", "moga_jax.plan"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "PFLOP" in done.stdout
