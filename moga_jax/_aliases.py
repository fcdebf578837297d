"""The module paths of moga-jax before its subpackages (2026-12), kept working with a warning.

`import moga_jax.attention` (or `from moga_jax.training import make_train_step`) imports the
module's new home (`moga_jax.model.attention`, `moga_jax.train.state`) and registers it under the
old name too, so both names give the same module object and the same classes. `python -m
moga_jax.plan` (and the other old commands) runs the new module as `__main__`. Each old name warns
once (DeprecationWarning) with its replacement. `OLD_TO_NEW` is the one list of moves; the docs'
architecture page gives the layout.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

OLD_TO_NEW = {
  "moga_jax.attention": "moga_jax.model.attention",
  "moga_jax.dit": "moga_jax.model.dit",
  "moga_jax.layers": "moga_jax.model.layers",
  "moga_jax.model_config": "moga_jax.model.config",
  "moga_jax.remat": "moga_jax.model.remat",
  "moga_jax.rope": "moga_jax.model.rope",
  "moga_jax.routing": "moga_jax.model.routing",
  "moga_jax.text": "moga_jax.model.text",
  "moga_jax.latents": "moga_jax.model.latents",
  "moga_jax.unipc": "moga_jax.diffusion.unipc",
  "moga_jax.sampling": "moga_jax.diffusion.sampling",
  "moga_jax.sharding": "moga_jax.parallel.sharding",
  "moga_jax.sequence_parallel": "moga_jax.parallel.sequence_parallel",
  "moga_jax.tpu_slices": "moga_jax.parallel.tpu_slices",
  "moga_jax.training": "moga_jax.train.state",
  "moga_jax.checkpoint": "moga_jax.train.checkpoint",
  "moga_jax.ema": "moga_jax.train.ema",
  "moga_jax.run_guard": "moga_jax.train.run_guard",
  "moga_jax.config_files": "moga_jax.train.config_files",
  "moga_jax.plots": "moga_jax.train.plots",
  "moga_jax.plan": "moga_jax.tools.plan",
  "moga_jax.flops": "moga_jax.tools.flops",
  "moga_jax.tpu_compile": "moga_jax.tools.tpu_compile",
  "moga_jax.gpu_compile": "moga_jax.tools.gpu_compile",
  "moga_jax.convert_wan": "moga_jax.wan.convert",
  "moga_jax.wan.converted": "moga_jax.wan.converted_folder",
  "moga_jax.export": "moga_jax.wan.export",
  "moga_jax.reproduce": "moga_jax.reproduction.run",
  "moga_jax.reproduce_plots": "moga_jax.reproduction.plots",
  "moga_jax.data.consistency": "moga_jax.reproduction.consistency_data",
  "moga_jax.eval": "moga_jax.reproduction.eval",
  "moga_jax.eval.consistency": "moga_jax.reproduction.eval.consistency",
  "moga_jax.eval.stats": "moga_jax.reproduction.eval.stats",
  "moga_jax.video_io": "moga_jax.data.video_io",
  "moga_jax.cli_logging": "moga_jax.cli.logs",
}
# `moga_jax.model` and `moga_jax.diffusion` were modules and are now packages of the same name:
# their old contents are re-exported by the packages themselves (see their __init__), not here.


def _warn(old: str, new: str) -> None:
  warnings.warn(
    f"{old} moved to {new}; the old name will be removed in a later release",
    DeprecationWarning,
    stacklevel=3,
  )


class _AliasLoader(importlib.abc.Loader):
  """Loads an old name as the new module itself; `get_code` serves `python -m OLD`."""

  def __init__(self, old: str, new: str):
    self.old, self.new = old, new

  def create_module(self, spec):
    _warn(self.old, self.new)
    return importlib.import_module(self.new)

  def exec_module(self, module) -> None:
    pass  # the new module ran when it was imported

  def get_code(self, fullname: str):
    spec = importlib.util.find_spec(self.new)
    if spec is None or spec.loader is None:
      raise ImportError(f"{self.new} (the new home of {self.old}) is not importable")
    if spec.submodule_search_locations is not None:  # a package: `-m` runs its __main__
      return None
    return spec.loader.get_code(self.new)

  def is_package(self, fullname: str) -> bool:
    spec = importlib.util.find_spec(self.new)
    return spec is not None and spec.submodule_search_locations is not None


class _AliasFinder(importlib.abc.MetaPathFinder):
  def find_spec(self, fullname: str, path=None, target=None):
    new = OLD_TO_NEW.get(fullname)
    if new is None:
      return None
    new_spec = importlib.util.find_spec(new)
    is_package = new_spec is not None and new_spec.submodule_search_locations is not None
    spec = importlib.machinery.ModuleSpec(
      fullname, _AliasLoader(fullname, new), is_package=is_package, origin=new_spec.origin
    )
    if is_package:
      spec.submodule_search_locations = list(new_spec.submodule_search_locations)
    return spec


def install() -> None:
  """Puts the finder first on sys.meta_path (idempotent)."""
  if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
