"""Does each Wan config's whole training step fit its TPU slice? Compiles it for the chips.

  python benchmarks/tpu_fit.py                       # every row, benchmarks/results/tpu_fit.json
  python benchmarks/tpu_fit.py --only stage1         # rows whose name contains "stage1"

Each row runs `python -m moga_jax.tools.plan --config ... --aot --aot_tpu SLICE --json` in its own
process (libtpu's compile-only devices; no TPU needed): the real training step (forward,
backward, AdamW update, the Pallas TPU kernels) compiled by XLA:TPU for that slice, and its
per-chip peak (arguments + outputs + temporaries - aliased; host-offloaded bytes apart) set
against 90% of the chip's HBM. Rows: each config on the slice it names (its own mesh), then
smaller slices that probe the smallest one that fits. A compile takes 1-8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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
    "580k on v5p-32",
    "configs/wan14b_moga_580k.py:v5p-64",
    "v5p-32",
    (
      "--mesh",
      "fsdp=2,context=8",
      "--config.train.batch_size=2",
      "--config.train.grad_accum_steps=4",
    ),
  ),
  (
    "580k on v5p-16",
    "configs/wan14b_moga_580k.py:v5p-64",
    "v5p-16",
    ("--mesh", "context=8", "--config.train.batch_size=1", "--config.train.grad_accum_steps=8"),
  ),
)


def _plan_command(config: str, tpu_slice: str, extra, *, aot: bool) -> list[str]:
  return [
    sys.executable,
    "-m",
    "moga_jax.tools.plan",
    "--config",
    str(ROOT / config),
    *(["--aot"] if aot else []),
    "--aot_tpu",
    tpu_slice,
    "--json",
    *extra,
  ]


def estimate(config: str, tpu_slice: str, extra) -> dict:
  """The planner's per-chip estimate for a row, without compiling (seconds): the peak, its
  working-set part and that part's units (moga_jax.tools.plan.working_set_units)."""
  result = subprocess.run(
    _plan_command(config, tpu_slice, extra, aot=False),
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  )
  mem = json.loads(result.stdout.strip().splitlines()[-1])["per_device_bytes"]
  return {k: mem[k] for k in ("peak_estimate", "working_set", "working_set_units")}


def fit_working_set(rows: list[dict]) -> dict[str, float]:
  """Non-negative least squares of the compiled peaks' working-set part (peak - what the
  planner counts exactly) on the working-set units, by trying every subset of terms: the
  coefficients for moga_jax.tools.plan.WORKING_SET."""
  rows = [r for r in rows if r.get("peak_bytes") and "estimate" in r]
  names = list(rows[0]["estimate"]["working_set_units"])
  units = np.array([[r["estimate"]["working_set_units"][n] for n in names] for r in rows], float)
  rest = np.array([r["estimate"]["peak_estimate"] - r["estimate"]["working_set"] for r in rows])
  target = np.array([r["peak_bytes"] for r in rows], float) - rest
  best = None
  for mask in itertools.product((0, 1), repeat=len(names)):
    cols = [i for i, on in enumerate(mask) if on]
    if not cols:
      continue
    coef = np.zeros(len(names))
    # Relative errors: divide each row by its compiled peak, so small chips count as much.
    weight = 1 / np.array([r["peak_bytes"] for r in rows], float)
    solution = np.linalg.lstsq(units[:, cols] * weight[:, None], target * weight, rcond=None)[0]
    if (solution < 0).any():
      continue
    coef[cols] = solution
    worst = np.max(np.abs((rest + units @ coef) * weight - 1))
    if best is None or worst < best[0]:
      best = (worst, coef)
  return {n: round(float(c), 2) for n, c in zip(names, best[1], strict=True)}


def run_row(name: str, config: str, tpu_slice: str, extra: tuple[str, ...]) -> dict:
  command = _plan_command(config, tpu_slice, extra, aot=True)
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
    "estimate": {
      k: plan["per_device_bytes"][k] for k in ("peak_estimate", "working_set", "working_set_units")
    },
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
    "| row | slice | mesh | peak GiB / chip | HBM GiB | fits | host GiB | planner's estimate "
    "GiB | compile s |",
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
      f"{gib(r['estimate_bytes'])}"
      + (f" ({r['estimate_bytes'] / r['peak_bytes'] - 1:+.0%})" if r["peak_bytes"] else "")
      + f" | {r['compile_s']} |"
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
  parser.add_argument(
    "--fit",
    action="store_true",
    help="fit the planner's working-set coefficients to the compiled rows (prints them)",
  )
  parser.add_argument(
    "--estimates_only",
    action="store_true",
    help="refresh every row's planner estimate in --json_out (no compile; after retuning it)",
  )
  args = parser.parse_args()
  out = Path(args.json_out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if args.estimates_only or args.fit:
    rows = json.loads(out.read_text())
    for row in rows:
      row["estimate"] = estimate(row["config"], row["slice"], row["extra_flags"])
      row["estimate_bytes"] = row["estimate"]["peak_estimate"]
    if args.fit:
      print(
        f"WORKING_SET = {fit_working_set(rows)}  (paste into moga_jax/tools/plan.py, then rerun"
        " with --estimates_only)"
      )
    else:
      out.write_text(json.dumps(rows, indent=1) + "\n")
      print(format_rows(rows))
    return
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
