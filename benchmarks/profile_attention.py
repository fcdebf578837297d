"""Profile group attention at a short and a long sequence (issue 29, item 5) and summarise it.

  python benchmarks/profile_attention.py --out DIR          # GPU: 32K and 524K tokens, G 32
  python benchmarks/profile_attention.py --cpu --out DIR    # tiny, xla path: checks the script

On an H100 group attention reached 58-60% of the ideal sparse speed-up at 524K tokens (G 32)
but 20-36% at 32K (README, results/gpu_h100). This records where a call's time goes at both
lengths: the inputs of attention_bench's gpu preset (bf16, 1 x N x 8 heads x 128, uniform
random routing per head, G groups, tile 128) through `group_attention` on the backend's
kernels; cuDNN dense attention at lengths up to --dense_max_seq as a reference. Each is
compiled and warmed up, then --calls calls are traced with jax.profiler, each inside a
`TraceAnnotation` named `groups_N_call_I` (`dense_N_call_I`) that blocks until its output is
ready. benchmarks/trace_summary.py then splits each call into kernel time (attention kernels
vs layout ops) and the device's idle time (lead, gaps, tail).

Writes DIR/profile/ (the raw profile: TensorBoard's profile plugin, xprof or Perfetto read
it), DIR/profile_trace.json.gz (the Chrome-format trace, copied flat), DIR/profile.json
(the summary plus each label's wall-clock median of the traced calls) and prints the table.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(Path(__file__).parent))
import trace_summary

from pallas_kernels import group_attention

_OUT = flags.DEFINE_string("out", "benchmarks/results/profile", "Output folder.")
_CPU = flags.DEFINE_bool(
  "cpu",
  False,
  "Tiny sizes on the xla path (float32, 2 heads x 32, 1K and 2K tokens unless --seq_lens):"
  " checks the script on a CPU.",
)
_SEQ_LENS = flags.DEFINE_list("seq_lens", ["32768", "524288"], "Sequence lengths to profile.")
_GROUPS = flags.DEFINE_integer("groups", 32, "Groups G (uniform random routing per head).")
_CALLS = flags.DEFINE_integer("calls", 5, "Traced calls per length, after one warm-up call.")
_DENSE_MAX = flags.DEFINE_integer(
  "dense_max_seq", 32768, "Also profile dense attention (cuDNN on GPU) up to this length."
)


def _inputs(seq: int, heads: int, head_dim: int, dtype, groups: int):
  keys = jax.random.split(jax.random.key(seq), 4)
  shape = (1, seq, heads, head_dim)
  q, k, v = (jax.random.normal(s, shape, jnp.float32).astype(dtype) for s in keys[:3])
  ids = jax.random.randint(keys[3], shape[:3], 0, groups)
  return q, k, v, ids


def _traced_calls(label: str, compiled, args, calls: int) -> list[float]:
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for i in range(calls):
    with jax.profiler.TraceAnnotation(f"{label}_call_{i}"):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
  return times


def main(argv):
  del argv
  cpu = _CPU.value
  heads, head_dim = (2, 32) if cpu else (8, 128)
  dtype = jnp.float32 if cpu else jnp.bfloat16
  implementation = "xla" if cpu else None  # None: the backend's kernels (pallas_gpu on a GPU)
  dense_impl = "cudnn" if jax.default_backend() == "gpu" else None
  seq_lens = [int(s) for s in _SEQ_LENS.value]
  if cpu and not flags.FLAGS["seq_lens"].present:
    seq_lens = [1024, 2048]
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  print(
    f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); "
    f"1 x N x {heads} heads x {head_dim}, {jnp.dtype(dtype).name}, G {_GROUPS.value}, "
    f"{_CALLS.value} traced calls per row",
    flush=True,
  )
  programs = []  # (label, compiled, args): everything compiles before the trace starts
  for seq in seq_lens:
    q, k, v, ids = _inputs(seq, heads, head_dim, dtype, _GROUPS.value)
    groups = lambda q, k, v, ids: group_attention(
      q, k, v, ids, num_groups=_GROUPS.value, implementation=implementation, tile=128
    )
    programs.append(
      (f"groups_{seq}", jax.jit(groups).lower(q, k, v, ids).compile(), (q, k, v, ids))
    )
    if seq <= _DENSE_MAX.value:
      dense = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=dense_impl)
      programs.append((f"dense_{seq}", jax.jit(dense).lower(q, k, v).compile(), (q, k, v)))
  trace_dir = out / "profile"
  wall = {}
  jax.profiler.start_trace(str(trace_dir), create_perfetto_trace=True)
  try:
    for label, compiled, args in programs:
      wall[label] = _traced_calls(label, compiled, args, _CALLS.value)
  finally:
    jax.profiler.stop_trace()
  trace = trace_summary.find_trace(trace_dir)
  shutil.copy(trace, out / "profile_trace.json.gz")
  summary = trace_summary.summarise(trace_summary.load_events(trace))
  for label, times in wall.items():
    if label not in summary["labels"]:
      raise RuntimeError(f"the trace {trace} holds no {label}_call_* annotation")
    summary["labels"][label]["median_s_perf_counter"] = statistics.median(times)
  summary.update(
    trace=str(trace),
    backend=jax.default_backend(),
    device_kind=jax.devices()[0].device_kind,
    jax=jax.__version__,
    shape={"heads": heads, "head_dim": head_dim, "dtype": jnp.dtype(dtype).name},
    groups=_GROUPS.value,
  )
  (out / "profile.json").write_text(json.dumps(summary, indent=2))
  print(trace_summary.format_summary(summary))
  for label, times in wall.items():
    print(f"{label}: median {1e3 * statistics.median(times):.3f} ms per call (perf_counter)")
  print(f"wrote {out / 'profile.json'} and {out / 'profile_trace.json.gz'}")


if __name__ == "__main__":
  app.run(main)
