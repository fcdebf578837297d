"""The kernel package's import boundary: the light modules and the "xla" path load no backend.

Code outside the kernels (data pipeline, video I/O, layers) imports `pallas_kernels.common`
and `pallas_kernels.validation`; neither, nor `import pallas_kernels`, may load the Pallas TPU
or GPU kernels (or Pallas, Mosaic, Triton) before one is run. Checked in one clean interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pallas_kernels

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
  """
  import json, sys

  BACKENDS = (
    "pallas_kernels.block_sparse.tpu", "pallas_kernels.block_sparse.gpu",
    "jax.experimental.pallas", "jax._src.pallas", "jax.experimental.mosaic",
    "jax._src.lib.triton", "jaxlib.triton", "triton",
  )
  loaded = lambda prefixes: sorted(m for m in sys.modules if m.startswith(prefixes))
  seen = {}

  from pallas_kernels.common import cdiv, check_int, check_int_triple, check_positive_int
  seen["common"] = loaded(("jax", "numpy", "pallas_kernels."))

  import pallas_kernels
  seen["package"] = loaded(("jax", "pallas_kernels."))

  from pallas_kernels.validation import check_int
  from pallas_kernels.metadata import cdiv
  seen["validation"] = loaded(BACKENDS)

  import pallas_kernels.window_attention  # binds the submodule: the name stays the function
  seen["window_attention"] = type(pallas_kernels.window_attention).__name__

  import jax, jax.numpy as jnp
  q = jax.random.normal(jax.random.key(0), (1, 32, 2, 16))
  ids = jnp.arange(32)[None] % 2
  pallas_kernels.group_attention(q, q, q, ids, num_groups=2, implementation="xla", tile=16)
  pallas_kernels.resolve_implementation("pallas_gpu")  # resolving is not running
  seen["xla"] = loaded(BACKENDS)
  print(json.dumps(seen))
  """
)


def test_light_modules_and_the_xla_path_load_no_backend():
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(
    [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr
  seen = json.loads(done.stdout.strip().splitlines()[-1])
  assert seen["common"] == ["pallas_kernels.common"]  # standard library only: no JAX, no numpy
  assert seen["package"] == ["pallas_kernels.common"]  # the names load on first use
  assert seen["validation"] == []
  assert seen["window_attention"] == "function"
  assert seen["xla"] == []


def test_public_names_and_dir():
  assert sorted(pallas_kernels.__all__) == sorted(pallas_kernels._EXPORTS)
  for name in pallas_kernels.__all__:
    assert getattr(pallas_kernels, name) is not None
    assert name in dir(pallas_kernels)
  assert callable(pallas_kernels.group_attention)
  with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
    pallas_kernels.no_such_name  # noqa: B018
