"""Does each Wan config's whole training step fit its TPU slice? Compiles it for the chips.

  python benchmarks/tpu_fit.py                       # every row, benchmarks/results/tpu_fit.json
  python benchmarks/tpu_fit.py --only stage1         # rows whose name contains "stage1"

Each row runs `python -m moga_jax.plan --config ... --aot --aot_tpu SLICE --json` in its own
process (libtpu's compile-only devices; no TPU needed): the real training step (forward,
backward, AdamW update, the Pallas TPU kernels) compiled by XLA:TPU for that slice, and its
per-chip peak (arguments + outputs + temporaries - aliased; host-offloaded bytes apart) set
against 90% of the chip's HBM. Rows: each config on the slice it names (its own mesh), then
smaller slices that probe the smallest one that fits. A compile takes 1-8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30

# (name, config, slice, extra flags). A row without --mesh uses the config's own mesh.
ROWS = (
  ("stage1 (named)", "configs/wan1_3b_moga.py:stage1", "v5e-8", ()),
  (
    "stage1, smaller",
    "configs/wan1_3b_moga.py:stage1",
    "v5e-4",
    ("--mesh", "context=4", "--config.train.batch_size=1", "--config.train.grad_accum_steps=8"),
  ),
  ("stage2 (named)", "configs/wan1_3b_moga.py:stage2", "v5e-32", ()),
  (
    "stage2, smaller",
    "configs/wan1_3b_moga.py:stage2",
    "v5e-8",
    (
      "--mesh",
      "fsdp=2,context=4",
      "--config.train.batch_size=2",
      "--config.train.grad_accum_steps=4",
    ),
  ),
  ("580k (named, v6e)", "configs/wan14b_moga_580k.py:v6e-64", "v6e-64", ()),
  (
    "580k on v6e-64 without shares",
    "configs/wan14b_moga_580k.py:v6e-64",
    "v6e-64",
    (
      "--mesh",
      "fsdp=8,context=8",
      "--config.train.batch_size=8",
      "--config.train.grad_accum_steps=1",
    ),
  ),
  ("580k (named, v5p)", "configs/wan14b_moga_580k.py:v5p-64", "v5p-64", ()),
  (
    "580k, smaller v5p",
    "configs/wan14b_moga_580k.py:v5p-64",
    "v5p-16",
    ("--mesh", "context=8", "--config.train.batch_size=1", "--config.train.grad_accum_steps=8"),
  ),
)


def run_row(name: str, config: str, tpu_slice: str, extra: tuple[str, ...]) -> dict:
  command = [
    sys.executable,
    "-m",
    "moga_jax.plan",
    "--config",
    str(ROOT / config),
    "--aot",
    "--aot_tpu",
    tpu_slice,
    "--json",
    *extra,
  ]
  start = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
  lines = result.stdout.strip().splitlines()
  try:
    plan = json.loads(lines[-1])
  except (IndexError, json.JSONDecodeError):
    return {"name": name, "config": config, "slice": tpu_slice, "error": result.stderr[-800:]}
  aot = plan["aot"]
  row = {
    "name": name,
    "config": config,
    "extra_flags": list(extra),
    **{k: plan[k] for k in ("slice", "chip", "chips", "mesh", "hbm_bytes", "peak_bytes")},
    **{k: plan[k] for k in ("host_bytes", "fits", "compile_s", "tokens", "parameters")},
    "settings": plan["settings"],
    "wall_s": round(time.perf_counter() - start, 1),
    "estimate_bytes": plan["per_device_bytes"]["peak_estimate"],
  }
  for key in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "pallas_tpu_calls"):
    if key in aot:
      row[key] = aot[key]
  for key in ("error", "temp_bytes_required"):
    if key in aot:
      row[key] = aot[key]
  return row


def format_rows(rows: list[dict]) -> str:
  gib = lambda n: "-" if n is None else f"{n / GiB:.2f}"
  lines = [
    "| row | slice | mesh | peak GiB / chip | HBM GiB | fits | host GiB | estimate GiB "
    "| compile s |",
    "|---|---|---|---:|---:|---|---:|---:|---:|",
  ]
  for r in rows:
    if "mesh" not in r:
      lines.append(f"| {r['name']} | {r['slice']} | FAILED: {r['error'][-200:]} | | | | | | |")
      continue
    mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1) or "1"
    peak = gib(r["peak_bytes"])
    if r["peak_bytes"] is None and "temp_bytes_required" in r:
      peak = f"OOM (temporaries {gib(r['temp_bytes_required'])})"
    lines.append(
      f"| {r['name']} | {r['slice']} ({r['chips']} chips) | {mesh} | {peak} | "
      f"{gib(r['hbm_bytes'])} | {'yes' if r['fits'] else 'no'} | {gib(r['host_bytes'])} | "
      f"{gib(r['estimate_bytes'])} | {r['compile_s']} |"
    )
  return "\n".join(lines)


def _merge_into(path: Path, row: dict) -> None:
  """Writes `row` into the JSON list at `path` in ROWS order, replacing its namesake: rows of
  earlier runs stay unless recompiled (--only reruns some; two runs may share the file)."""
  rows = json.loads(path.read_text()) if path.exists() else []
  rows = [r for r in rows if r["name"] != row["name"]] + [row]
  order = [name for name, *_ in ROWS]
  rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
  path.write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="run the rows whose name contains this")
  parser.add_argument("--json_out", default=str(ROOT / "benchmarks/results/tpu_fit.json"))
  args = parser.parse_args()
  out = Path(args.json_out)
  out.parent.mkdir(parents=True, exist_ok=True)
  rows = []
  for name, config, tpu_slice, extra in ROWS:
    if args.only not in name:
      continue
    print(f"compiling {name}: {config} for {tpu_slice} ...", flush=True)
    rows.append(run_row(name, config, tpu_slice, extra))
    print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    _merge_into(out, rows[-1])  # every finished row, as it finishes
  print(format_rows(json.loads(out.read_text())))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
