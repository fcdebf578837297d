"""The module paths from before the subpackages (moga_jax._aliases) still work, warn, and give the
very same module objects; the package's top level stays light and its names load on use."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from moga_jax import _aliases

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(("old", "new"), sorted(_aliases.OLD_TO_NEW.items()))
def test_every_alias_points_at_a_module_that_exists(old, new):
  assert importlib.util.find_spec(new) is not None, new
  # the old name is no file of the tree any more (else the file would shadow nothing: a leftover)
  old_file = ROOT.joinpath(*old.split(".")).with_suffix(".py")
  assert not old_file.exists(), f"{old_file} still exists beside its alias"


def test_an_old_name_warns_and_is_the_new_module():
  sys.modules.pop("moga_jax.attention", None)
  with pytest.warns(DeprecationWarning, match=r"moga_jax\.attention moved to moga_jax\.model"):
    old = importlib.import_module("moga_jax.attention")
  new = importlib.import_module("moga_jax.model.attention")
  assert old is new
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from moga_jax.training import make_train_step
  from moga_jax.train.state import make_train_step as new_step

  assert make_train_step is new_step


def test_an_old_package_name_reaches_its_submodules():
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from moga_jax.eval import stats as old_stats
  from moga_jax.reproduction.eval import stats

  assert old_stats is stats


def test_modules_that_became_packages_keep_their_names():
  from moga_jax.diffusion import flow_matching_loss
  from moga_jax.diffusion.flow import flow_matching_loss as in_flow
  from moga_jax.model import TextToVideo
  from moga_jax.model.text_to_video import TextToVideo as in_module

  assert TextToVideo is in_module and flow_matching_loss is in_flow
  with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
    importlib.import_module("moga_jax.model").nothing  # noqa: B018


@pytest.mark.subprocess
def test_top_level_is_light_and_old_commands_run():
  """One interpreter: `import moga_jax` loads no submodule but the alias and lazy-export helpers
  (no jax, no flax); a name loads its module; `python -m moga_jax.plan --help` still runs."""
  script = (
    "import sys, moga_jax\n"
    "loaded = sorted(m for m in sys.modules if m.startswith(('moga_jax', 'jax', 'flax')))\n"
    "assert loaded == ['moga_jax', 'moga_jax._aliases', 'moga_jax._lazy'], loaded\n"
    "assert 'MoGAAttention' in dir(moga_jax)\n"
    "moga_jax.MoGAAttention\n"
    "assert 'moga_jax.model.attention' in sys.modules\n"
  )
  subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
  result = subprocess.run(
    [sys.executable, "-m", "moga_jax.plan", "--help"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=False,
  )
  # absl's --help exits 1 after printing the flags
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "--aot" in result.stdout
