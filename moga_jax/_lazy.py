"""Lazy package exports (PEP 562): a name is imported from its module on first use.

A package `__init__` lists `{name: module}`; `import moga_jax` then costs almost nothing, and
`moga_jax.MoGAAttention` loads the model layer only when asked for.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(
  package: str, names: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
  """(__getattr__, __dir__) for `package` exporting each name from its module."""

  def __getattr__(name: str):
    module = names.get(name)
    if module is None:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

  def __dir__() -> list[str]:
    return sorted(set(names) | set(vars(sys.modules[package])))

  return __getattr__, __dir__
