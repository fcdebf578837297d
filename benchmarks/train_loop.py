"""Steps per second of train.py with metrics fetched every step vs every `log_every` steps.

  python benchmarks/train_loop.py [--steps 60 --log_every 1 --log_every 10]

Runs train.py on configs/tiny.py (fresh workdirs, the same seed and data) once per log_every
value and reports the median steps/s over the steps after the first fetch window (compile
excluded), plus whether the losses agree (they must: fetching is all that changes). Prints a
table and writes JSON (benchmarks/results/train_loop.json).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from absl import app, flags
from train_runs import ROOT, run

_STEPS = flags.DEFINE_integer("steps", 60, "Training steps per run.")
_LOG_EVERY = flags.DEFINE_multi_integer("log_every", [1, 10], "Fetch intervals to compare.")
_OUT = flags.DEFINE_string("out", str(ROOT / "benchmarks/results/train_loop.json"), "JSON path.")


def main(argv):
  del argv
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    for k in _LOG_EVERY.value:
      rows = run(Path(tmp) / f"every{k}", _STEPS.value, f"--config.train.log_every={k}")
      after_first = [r["steps_per_s"] for r in rows if r["step"] > max(k, 10)]
      results.append(
        {
          "log_every": k,
          "steps": _STEPS.value,
          "steps_per_s": float(np.median(after_first)),
          "losses": [r["loss"] for r in rows],
        }
      )
  base = results[0]
  print("| log_every | steps/s (median, after the first window) | vs first | same losses |")
  print("|---:|---:|---:|---|")
  for r in results:
    print(
      f"| {r['log_every']} | {r['steps_per_s']:.3f} | "
      f"{r['steps_per_s'] / base['steps_per_s']:.3f} | {r['losses'] == base['losses']} |"
    )
  out = Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(
    json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "runs": results}, indent=1)
  )
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
