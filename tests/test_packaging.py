"""What `pip install` ships: the listed packages, the configs as moga_jax/configs (no top-level
`configs` package), and default config paths that do not depend on the working directory."""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from moga_jax.train import config_files

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


@pytest.mark.subprocess
def test_a_program_finds_its_default_config_from_any_folder(tmp_path):
  done = subprocess.run(
    [sys.executable, "-m", "moga_jax.tools.plan"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert "PFLOP" in done.stdout


# --- install tiers (issue 30): the core install, the extras, the commands -----------------------

CORE_OPS = ROOT / "tests" / "scripts" / "core_ops.py"
COMMANDS = {
  "moga-train": "moga_jax.cli:train_command",
  "moga-sample": "moga_jax.cli:sample_command",
  "moga-plan": "moga_jax.cli:plan_command",
  "moga-convert-wan": "moga_jax.cli:convert_wan_command",
  "moga-export": "moga_jax.cli:export_command",
  "moga-shots": "moga_jax.cli:shots_command",
}


def _project() -> dict:
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.subprocess
def test_the_module_layer_loads_no_extras_package():
  """MoGAAttention, group_attention and shot_window_attention forward + grad with every
  `train` / `wan` package refused at import (tests/scripts/core_ops.py --block)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(ROOT)}
  done = subprocess.run(
    [sys.executable, str(CORE_OPS), "--block"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout.splitlines()[-1])["file"] == str(ROOT / "moga_jax" / "__init__.py")


def test_core_dependencies_are_the_module_layers():
  """Core: jax, flax, numpy; the rest sits in extras, which the Makefile's env installs."""
  project = _project()
  names = lambda reqs: {re.split(r"[<>=\[;! ]", r, maxsplit=1)[0].lower() for r in reqs}
  assert names(project["dependencies"]) == {"jax", "flax", "numpy"}
  extras = project["optional-dependencies"]
  assert {"train", "wan", "shots", "gpu", "tpu", "tpu-compile", "gpu-compile", "parity"} <= set(
    extras
  )
  assert {"optax", "orbax-checkpoint", "grain", "tensorflow-datasets", "av"} <= names(
    extras["train"]
  )
  assert {"tokenizers", "huggingface_hub", "safetensors"} <= names(extras["wan"])
  assert set(extras["all"]) == {"moga-jax[train,wan,shots]"}
  pip_line = re.search(r"pip install .*-e '\.\[([^\]]*)\]'", (ROOT / "Makefile").read_text())
  assert {"train", "wan", "dev"} <= set(pip_line.group(1).split(","))


def test_version_is_the_projects():
  import moga_jax

  assert moga_jax.__version__ == _project()["version"]
  assert (
    re.search(r'__version__ = "([^"]+)"', (ROOT / "moga_jax/__init__.py").read_text()).group(1)
    == _project()["version"]
  ), "the fallback for a checkout not installed"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
  """The wheel `pip install` would build from this tree (built from a copy: the tree keeps no
  build/ or egg-info)."""
  base = tmp_path_factory.mktemp("wheel")
  src = base / "src"
  src.mkdir()
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(ROOT / name, src / name)
  for name in ("moga_jax", "pallas_kernels", "configs"):
    shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(src)],
    check=True,
    capture_output=True,
    timeout=300,
  )
  (found,) = (base / "dist").glob("moga_jax-*.whl")
  return found


@pytest.mark.subprocess
def test_the_wheel_installs_the_commands(wheel):
  with zipfile.ZipFile(wheel) as z:
    (entry_points,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(z.read(entry_points).decode())
    files = set(z.namelist())
  assert dict(parser["console_scripts"]) == COMMANDS
  assert "moga_jax/cli/train.py" in files and "moga_jax/configs/tiny.py" in files
  import moga_jax.cli

  for target in COMMANDS.values():
    assert callable(getattr(moga_jax.cli, target.partition(":")[2]))


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_core_install_from_the_wheel_runs_the_module_layer(wheel, tmp_path):
  """A fresh venv with the wheel and its core dependencies only (the versions this suite runs
  with, as constraints: pip then reuses its cache and wheels): MoGAAttention, group_attention
  and shot_window_attention forward + grad, none of the extras' packages importable."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
  python = venv / "bin" / "python"
  constraints = tmp_path / "constraints.txt"
  constraints.write_text(
    "".join(
      f"{d.metadata['Name']}=={d.version}\n"
      for d in importlib.metadata.distributions()
      if d.metadata["Name"] and d.metadata["Name"].lower() != "moga-jax"
    )
  )
  started = time.perf_counter()
  install = subprocess.run(
    [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), str(wheel)],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert install.returncode == 0, install.stderr[-3000:]
  installed = time.perf_counter() - started
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
  for module in ("optax", "flax", "tensorflow_datasets", "grain", "ml_collections", "tokenizers"):
    found = subprocess.run(
      [str(python), "-c", f"import importlib.util as u; print(u.find_spec({module!r}) is None)"],
      capture_output=True,
      text=True,
      cwd=tmp_path,
      env=env,
      timeout=120,
    )
    # optax and flax come with the core install; the rest are extras'.
    assert found.stdout.strip() == str(module not in ("optax", "flax")), (module, found.stderr)
  done = subprocess.run(
    [str(python), str(CORE_OPS)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout.splitlines()[-1])["file"].startswith(str(venv))
  # The commands are installed, and without their extras say which one in a line (exit 2).
  for command, extra in (("moga-train", "train"), ("moga-shots", "shots")):
    ran = subprocess.run(
      [str(venv / "bin" / command), "--workdir", str(tmp_path / "run"), "--videos", "."],
      capture_output=True,
      text=True,
      cwd=tmp_path,
      env=env,
      timeout=300,
    )
    assert ran.returncode == 2, ran.stderr[-3000:]
    assert re.fullmatch(
      rf"{command}: error: \w+ is not installed; this command needs the `{extra}` extra: "
      rf"pip install 'moga-jax\[{extra}\]'\n",
      ran.stderr,
    ), ran.stderr[-3000:]
  print(f"core install: {installed:.1f} s")
