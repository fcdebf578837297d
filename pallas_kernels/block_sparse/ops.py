"""Which implementation runs: one registry, one resolver.

`implementation=None` picks the best implementation that can run on the current backend and
falls back to "xla", which runs everywhere. A name asks for exactly that implementation and
fails fast, before tracing, with the reason it cannot run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax


@dataclasses.dataclass(frozen=True)
class Implementation:
  name: str
  summary: str
  # Returns None when it can run on `backend` (with `interpret`), else the reason it cannot.
  unavailable: Callable[[str, bool | None], str | None]


def _always(backend: str, interpret: bool | None) -> None:
  del backend, interpret
  return None


def _not_built(backend: str, interpret: bool | None) -> str:
  del backend, interpret
  return ("this release has no Pallas kernel yet; 'xla' runs the same exact algorithm on every "
          "backend")


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl
    for impl in (
        Implementation("reference", "dense masked attention, O(N^2) memory, for tests",
                       _always),
        Implementation("xla", "exact blocked algorithm in plain JAX, any backend", _always),
        Implementation("pallas_tpu", "Pallas Mosaic TPU block-sparse kernel", _not_built),
        Implementation("pallas_gpu", "Pallas GPU block-sparse kernel", _not_built),
    )
}

# Tried in order by implementation=None; the last entry must run everywhere.
_PREFERENCE: dict[str, tuple[str, ...]] = {
    "tpu": ("pallas_tpu", "xla"),
    "gpu": ("pallas_gpu", "xla"),
}
_DEFAULT_PREFERENCE = ("xla",)


def resolve_implementation(
    implementation: str | None, *, interpret: bool | None = None, backend: str | None = None
) -> str:
  """Returns the name of the implementation to run, or raises ValueError saying why not."""
  backend = backend or jax.default_backend()
  if implementation is None:
    for name in _PREFERENCE.get(backend, _DEFAULT_PREFERENCE):
      if IMPLEMENTATIONS[name].unavailable(backend, interpret) is None:
        return name
    raise AssertionError("the last preference must always be available")  # pragma: no cover
  if not isinstance(implementation, str) or implementation not in IMPLEMENTATIONS:
    known = ", ".join(repr(n) for n in IMPLEMENTATIONS)
    raise ValueError(f"implementation must be None or one of {known}; got {implementation!r}")
  reason = IMPLEMENTATIONS[implementation].unavailable(backend, interpret)
  if reason is not None:
    raise ValueError(
        f"implementation={implementation!r} cannot run on backend {backend!r}: {reason}")
  return implementation


def block_sparse_attention(q, k, v, mask, *, scale: float, implementation: str,
                           interpret: bool | None = None):
  """Runs the named block-sparse kernel: q, k, v [rows, num_tiles * tile, D], mask a BlockMask."""
  if implementation == "xla":
    from pallas_kernels.block_sparse.xla import block_sparse_attention_xla

    return block_sparse_attention_xla(q, k, v, mask, scale=scale)
  raise ValueError(f"no block-sparse kernel named {implementation!r}")
