"""Compile the Pallas Triton kernels for an H100 (sm_90a) from a CPU host (no GPU needed).

  python -m moga_jax.tools.gpu_compile --head_dim 64 --head_dim 128
  python -m moga_jax.tools.gpu_compile --tile 64 --num_warps 4 --num_warps 8 --num_stages 2 \
      --json_out x

Users sample on H100s, and a Triton kernel that runs out of registers spills them to local
memory (L1/HBM traffic in the inner loop) and slows down, silently: interpret mode and the CPU
tests cannot see it. Here the three block-sparse kernels (forward, dq, dk/dv;
pallas_kernels/block_sparse/gpu.py) are lowered for CUDA at compute capability 9.0 as XLA would
see them (an abstract H100 stands in for the device), their Triton IR is taken from the
`__gpu$xla.gpu.triton` custom calls, compiled to PTX and a cubin for sm_90a by the `triton`
package (`pip install triton`; it bundles `ptxas`), and `ptxas -v` is read back. Reported per
kernel: registers per thread (at most 255), spill store/load bytes, and the shared memory a
block asks for (at most 227 KiB on H100).

The kernels XLA builds on a GPU come from the Triton fork jaxlib bundles and the CUDA toolkit's
ptxas, not from the `triton` wheel: treat the numbers as a close estimate, not the exact binary.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

KERNELS = ("forward", "dq", "dkdv")
_KIND_TO_KERNEL = {"fwd": "forward", "dq": "dq", "dkdv": "dkdv"}  # pallas_calls moga_*_{kind}
CAPABILITY = 90  # H100 / H200; Triton compiles for sm_90a
SHARED_BYTES = 227 * 1024  # the most shared memory one block may ask for on H100
MAX_REGISTERS = 255
_DEVICE_KIND = "NVIDIA H100 80GB HBM3"
_CUSTOM_CALL = "__gpu$xla.gpu.triton"
_TRITON_MISSING = (
  "moga_jax.tools.gpu_compile needs the `triton` package (`pip install triton`, tested "
  "with 3.9): it compiles the kernels' Triton IR to PTX and "
  "bundles the ptxas that reports registers and spills"
)


class TritonKernel(NamedTuple):
  """One pallas_call as XLA receives it: Triton IR (text) and the launch parameters."""

  name: str
  ttir: str
  num_warps: int
  num_stages: int


def _triton():
  try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
  except ImportError as err:
    raise ImportError(_TRITON_MISSING) from err
  return triton, GPUTarget, get_ptxas


def _attention_fn(tile: int, ranges: bool):
  """(f(q, k, v, ids) -> (dq, dk, dv), ids shape, length L): a group mask (one contiguous run of
  key tiles per query tile) or a shot-window range mask (STGA; adds key_lo/key_hi operands)."""
  from pallas_kernels.block_sparse import gpu
  from pallas_kernels.block_sparse.options import KernelOptions
  from pallas_kernels.metadata import group_layout, shot_window_layout

  if ranges:
    ids_shape = (2, 8)  # shot ids per frame
    make = lambda ids: shot_window_layout(
      ids,
      grid_shape=(8, 16, 16),
      spatial_groups=(2, 2),
      temporal_group=4,
      context_frames=1,
      tile=tile,
    )
  else:
    ids_shape = (2, 4 * tile)  # group ids per token
    make = lambda ids: group_layout(ids, num_groups=2, tile=tile)
  ids = jax.ShapeDtypeStruct(ids_shape, jnp.int32)
  length = jax.eval_shape(make, ids).src.shape[1]

  def grads(q, k, v, ids):
    mask = make(ids).mask

    def loss(q, k, v):
      compiled = KernelOptions(interpret=False)
      out = gpu.block_sparse_attention_gpu(
        q, k, v, mask, q.shape[-1] ** -0.5, compiled, "stga" if ranges else "group"
      )
      return out.astype(jnp.float32).sum()

    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  return grads, ids, length


def _custom_calls(module) -> list:
  found = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for child in block.operations:
          child = child.operation
          if child.name == "stablehlo.custom_call":
            target = child.attributes["call_target_name"]
            if str(target).strip('"') == _CUSTOM_CALL:
              found.append(child)
          walk(child)

  walk(module.operation)
  return found


def triton_kernels(
  tile: int, head_dim: int, dtype=jnp.bfloat16, *, ranges: bool = False
) -> list[TritonKernel]:
  """Lowers forward + backward of the GPU kernels for CUDA (compute capability 9.0) on this host
  and returns the Triton modules XLA would compile, with the launch parameters gpu.py chose."""
  from jax._src.lib.mlir import ir
  from jax._src.pallas.triton import lowering as triton_lowering

  grads, ids, length = _attention_fn(tile, ranges)
  q = jax.ShapeDtypeStruct((ids.shape[0], length, head_dim), dtype)
  # Pallas reads the compute capability from the device; an abstract H100 stands in for it.
  h100 = jax.sharding.AbstractDevice(device_kind=_DEVICE_KIND, num_cores=132, platform="cuda")
  with (
    warnings.catch_warnings(),
    jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)),
  ):
    warnings.filterwarnings("ignore", "The Pallas Triton backend is deprecated")
    lowered = jax.jit(grads).trace(q, q, q, ids).lower(lowering_platforms=("cuda",))
  kernels = []
  for call in _custom_calls(lowered.compiler_ir("stablehlo")):
    config = ir.DictAttr(call.attributes["mhlo.backend_config"])
    name = ir.StringAttr(config["name"]).value
    # The module is MLIR bytecode of jaxlib's MLIR; print it as text, which the triton package
    # (another MLIR version) parses.
    with triton_lowering._new_ir_context():  # jaxlib MLIR + Triton dialect
      module = ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes)
      ttir = module.operation.get_asm(enable_debug_info=False)
    kernels.append(
      TritonKernel(
        name=_KIND_TO_KERNEL[name.rsplit("_", 1)[-1]],
        ttir=ttir,
        num_warps=ir.IntegerAttr(config["num_warps"]).value,
        num_stages=ir.IntegerAttr(config["num_stages"]).value,
      )
    )
  return kernels


def parse_ptxas_log(log: str) -> dict:
  """Registers, spills, stack and static shared memory of the one kernel in a `ptxas -v` log."""

  def first(pattern: str, default: int | None = 0) -> int | None:
    match = re.search(pattern, log)
    return int(match.group(1)) if match else default

  registers = first(r"Used (\d+) registers", None)
  if registers is None:
    raise ValueError(f"no register count in the ptxas log:\n{log}")
  return {
    "registers": registers,
    "spill_store_bytes": first(r"(\d+) bytes spill stores"),
    "spill_load_bytes": first(r"(\d+) bytes spill loads"),
    "stack_bytes": first(r"(\d+) bytes stack frame"),
    "static_smem_bytes": first(r"(\d+) bytes smem"),
  }


def compile_kernel(
  kernel: TritonKernel,
  workdir: str | Path,
  *,
  num_warps: int | None = None,
  num_stages: int | None = None,
) -> dict:
  """Compiles one kernel for sm_90a (Triton's passes, then ptxas) and reads `ptxas -v`."""
  triton, gpu_target, get_ptxas = _triton()
  from triton import knobs

  workdir = Path(workdir)
  num_warps = kernel.num_warps if num_warps is None else num_warps
  num_stages = kernel.num_stages if num_stages is None else num_stages
  stem = f"{kernel.name}_w{num_warps}_s{num_stages}"
  source = workdir / f"{stem}.ttir"
  source.write_text(kernel.ttir)
  start = time.perf_counter()
  with knobs.cache.scope():
    knobs.cache.dir = str(workdir / "cache")  # a fresh cache: every compile is a real one
    compiled = triton.compile(
      str(source),
      target=gpu_target("cuda", CAPABILITY, 32),
      options={"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True},
    )
  ptx = workdir / f"{stem}.ptx"
  ptx.write_text(compiled.asm["ptx"])
  # The flags Triton's own ptxas call uses (`make_cubin`), plus -v; its log is not kept.
  result = subprocess.run(
    [
      get_ptxas(CAPABILITY).path,
      "-v",
      "--regAllocOptLevel=2",
      f"--gpu-name=sm_{CAPABILITY}a",
      str(ptx),
      "-o",
      str(workdir / f"{stem}.cubin"),
    ],
    capture_output=True,
    text=True,
    check=True,
  )
  usage = parse_ptxas_log(result.stdout + result.stderr)
  return {
    "num_warps": num_warps,
    "num_stages": num_stages,
    **usage,
    # Triton's shared memory is dynamic, asked for at launch (metadata), plus any static.
    "shared_bytes": int(compiled.metadata.shared) + usage["static_smem_bytes"],
    "compile_s": round(time.perf_counter() - start, 2),
  }


def kernel_reports(
  tile: int, head_dim: int, dtype=jnp.bfloat16, *, ranges: bool = False, launch=None
) -> list[dict]:
  """One dict per kernel (forward, dq, dkdv) compiled for H100: kernel, tile, head_dim, dtype,
  num_warps, num_stages, registers, spill_store_bytes, spill_load_bytes, shared_bytes, ...

  launch: None for the launch parameters gpu.py picks (`gpu.launch_params`), or a
  `gpu.LaunchParams` for every kernel, or a mapping kernel name ("forward", "dq", "dkdv") ->
  LaunchParams. The Triton IR does not depend on them, so one lowering serves every setting.
  """
  from pallas_kernels.block_sparse.dispatch import check_hardware_tiling
  from pallas_kernels.block_sparse.gpu import LaunchParams

  check_hardware_tiling(
    "pallas_gpu", tile=tile, head_dim=head_dim, itemsize=jnp.dtype(dtype).itemsize
  )
  if launch is not None and not isinstance(launch, LaunchParams | Mapping):
    raise TypeError(
      f"launch must be None, a gpu.LaunchParams or a mapping kernel name -> "
      f"LaunchParams, got {type(launch).__name__}"
    )
  if isinstance(launch, Mapping) and set(launch) - set(KERNELS):
    raise ValueError(
      f"launch names kernels {sorted(set(launch) - set(KERNELS))}; the kernels are {KERNELS}"
    )
  _triton()
  kernels = triton_kernels(tile, head_dim, dtype, ranges=ranges)
  return compile_kernels(kernels, tile, head_dim, dtype, ranges=ranges, launch=launch)


def compile_kernels(
  kernels: Sequence[TritonKernel],
  tile: int,
  head_dim: int,
  dtype,
  *,
  ranges: bool = False,
  launch=None,
) -> list[dict]:
  """`kernel_reports` for kernels already lowered by `triton_kernels`."""
  rows = []
  with tempfile.TemporaryDirectory(prefix="gpu_compile_") as workdir:
    for kernel in kernels:
      params = launch.get(kernel.name) if isinstance(launch, Mapping) else launch
      row = {
        "kernel": kernel.name,
        "ranges": ranges,
        "tile": tile,
        "head_dim": head_dim,
        "dtype": jnp.dtype(dtype).name,
      }
      row.update(
        compile_kernel(
          kernel,
          workdir,
          num_warps=None if params is None else params.num_warps,
          num_stages=None if params is None else params.num_stages,
        )
      )
      rows.append(row)
  return rows


def format_rows(rows: list[dict]) -> str:
  lines = [
    "| kernel | mask | tile | head_dim | dtype | warps | stages | registers "
    "| spill stores B | spill loads B | shared KiB | compile s |",
    "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['kernel']} | {'range' if r['ranges'] else 'group'} | {r['tile']} | "
      f"{r['head_dim']} | {r['dtype']} | {r['num_warps']} | {r['num_stages']} | "
      f"{r['registers']} | {r['spill_store_bytes']} | {r['spill_load_bytes']} | "
      f"{r['shared_bytes'] / 1024:.1f} | {r['compile_s']} |"
    )
  return "\n".join(lines)


def main(argv) -> None:
  del argv
  from absl import flags

  from pallas_kernels.block_sparse.gpu import LaunchParams

  f = flags.FLAGS
  sweep = f.num_warps or f.num_stages
  rows = []
  for tile in f.tile:
    for head_dim in f.head_dim:
      for ranges in (False, True):
        kernels = triton_kernels(tile, head_dim, f.dtype, ranges=ranges)
        if not sweep:
          rows += compile_kernels(kernels, tile, head_dim, f.dtype, ranges=ranges)
          continue
        for warps in f.num_warps or [None]:
          for stages in f.num_stages or [None]:
            for kernel in kernels:  # unset flags keep gpu.py's choice for that kernel
              params = LaunchParams(warps or kernel.num_warps, stages or kernel.num_stages)
              rows += compile_kernels(
                [kernel], tile, head_dim, f.dtype, ranges=ranges, launch=params
              )
  print(format_rows(rows))
  if f.json_out:
    Path(f.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  from absl import app, flags

  _triton()
  jax.config.update("jax_platforms", "cpu")  # nothing runs; don't start a local accelerator
  flags.DEFINE_multi_integer("tile", [128], "Tile sizes (powers of two, at least 16).")
  flags.DEFINE_multi_integer("head_dim", [64, 128], "Head dims (powers of two, at least 16).")
  flags.DEFINE_string("dtype", "bfloat16", "Activation dtype.")
  flags.DEFINE_multi_integer("num_warps", None, "Sweep these warps (default: gpu.py's choice).")
  flags.DEFINE_multi_integer(
    "num_stages", None, "Sweep these pipeline stages (default: gpu.py's choice)."
  )
  flags.DEFINE_string("json_out", None, "Also write the rows as JSON here.")
  app.run(main)
