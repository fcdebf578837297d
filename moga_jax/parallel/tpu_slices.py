"""TPU slices as Google sells them: chip generations, their HBM, slice names and torus shapes,
and compile-only devices for a slice (libtpu's `jax.experimental.topologies`, any host).

Slice names count chips for v5e and v6e ("v5e-8": 8 chips) and TensorCores for v5p, two per
chip ("v5p-64": 32 chips, a 4x4x2 torus).
"""

from __future__ import annotations

import os

# Topology names `jax.experimental.topologies.get_topology_desc` takes for one chip.
# (v4 is left out: its topologies count two devices per chip.)
CHIPS = {"v5e": "v5e=1x1", "v5p": "v5p=1x1x1", "v6e": "v6e=1x1"}
# HBM per chip, as sold (the fit budget is a fraction of it; XLA reserves a little more).
HBM_BYTES = {"v5e": 16 * 2**30, "v5p": 95 * 2**30, "v6e": 32 * 2**30}
# v5p slices are named by TensorCores, two per chip (v5p-64 is 32 chips, 4x4x2); v5e and v6e
# by chips.
CORES_PER_CHIP = {"v5e": 1, "v5p": 2, "v6e": 1}
# Slice shapes sold (chips -> torus dims); v5p's bigger slices are cubes of 4s and their doubles.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8)}
_SHAPES_2D |= {128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}
_SHAPES_3D |= {64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)}


def parse_slice(text: str) -> tuple[str, int | None]:
  """(chip, chips) of "v5e" (no count) or a slice name "v5e-8", "v6e-64", "v5p-64" (v5p
  counts TensorCores: v5p-64 is 32 chips)."""
  chip, _, count = text.partition("-")
  if chip not in CHIPS:
    raise ValueError(
      f"chip must be one of {sorted(CHIPS)} (or a slice such as v5e-8), got {text!r}"
    )
  if not count:
    return chip, None
  if not count.isdigit() or int(count) % CORES_PER_CHIP[chip]:
    raise ValueError(f"a slice looks like {chip}-8 (a count of chips, cores for v5p), got {text!r}")
  return chip, int(count) // CORES_PER_CHIP[chip]


def slice_name(chip: str, chips: int) -> str:
  return f"{chip}-{chips * CORES_PER_CHIP[chip]}"


def topology_shape(chip: str, count: int) -> tuple[int, ...]:
  """The torus dims of a `count`-chip slice of `chip`, as Google sells them."""
  shapes = _SHAPES_2D if CHIPS[chip].count("x") == 1 else _SHAPES_3D
  if count not in shapes:
    raise ValueError(
      f"{chip} slices come with {sorted(shapes)} chips (compile-only topologies), got {count}"
    )
  return shapes[count]


def tpu_devices(chip: str, count: int) -> list:
  """`count` compile-only devices of one TPU generation (a slice topology of that size)."""
  from jax.experimental import topologies

  if chip not in CHIPS:
    raise ValueError(f"chip must be one of {sorted(CHIPS)}, got {chip!r}")
  dims = topology_shape(chip, count)
  name = f"{chip}={'x'.join(map(str, dims))}"
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  devices = topologies.get_topology_desc(name, platform="tpu").devices
  if len(devices) != count:
    raise ValueError(f"topology {name} has {len(devices)} devices, wanted {count}")
  return list(devices)
