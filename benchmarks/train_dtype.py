"""The tiny config trained in float32 and in bfloat16 compute, same seed and data.

  python benchmarks/train_dtype.py [--steps 200]

Runs train.py on configs/tiny.py once per config.model.dtype and reports the median steps/s
(after the first fetch window: compile excluded) and how far the loss curves are apart; writes
results/bf16_tiny.json and results/bf16_tiny.png (both loss curves, 20-step means).
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

_STEPS = flags.DEFINE_integer("steps", 200, "Training steps per run.")
_OUT = flags.DEFINE_string("out", str(ROOT / "results" / "bf16_tiny"), "Output path stem.")
_WINDOW = 20


def smooth(values: list[float]) -> np.ndarray:
  return np.convolve(values, np.ones(_WINDOW) / _WINDOW, mode="valid")


def main(argv):
  del argv
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for dtype in ("float32", "bfloat16"):
      rows = run(Path(tmp) / dtype, _STEPS.value, f"--config.model.dtype={dtype}")
      runs[dtype] = {
        "steps_per_s": float(np.median([r["steps_per_s"] for r in rows if r["step"] > 10])),
        "loss": [r["loss"] for r in rows],
      }
  f32, bf16 = (smooth(runs[d]["loss"]) for d in ("float32", "bfloat16"))
  gap = np.abs(bf16 - f32) / f32
  summary = {
    "machine": platform.platform(),
    "cpus": os.cpu_count(),
    "steps": _STEPS.value,
    "smoothing_window": _WINDOW,
    "max_relative_gap_smoothed": float(gap.max()),
    "final_relative_gap_smoothed": float(gap[-1]),
    "runs": runs,
  }
  print("| dtype | steps/s (median) | final loss (20-step mean) |")
  print("|---|---:|---:|")
  for dtype, curve in (("float32", f32), ("bfloat16", bf16)):
    print(f"| {dtype} | {runs[dtype]['steps_per_s']:.3f} | {curve[-1]:.4f} |")
  print(f"loss curves (20-step means) differ by at most {gap.max():.1%}, {gap[-1]:.1%} at the end")
  out = Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
  fig, ax = plt.subplots(figsize=(6, 3.5))
  steps = np.arange(_WINDOW, _STEPS.value + 1)
  for dtype, curve in (("float32", f32), ("bfloat16", bf16)):
    ax.plot(steps, curve, label=f"{dtype} ({runs[dtype]['steps_per_s']:.2f} steps/s)")
  ax.set(
    xlabel="step",
    ylabel=f"loss ({_WINDOW}-step mean)",
    yscale="log",
    title="tiny config, same seed: float32 vs bfloat16 compute",
  )
  ax.legend()
  fig.tight_layout()
  fig.savefig(out.with_suffix(".png"), dpi=120)
  print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
  app.run(main)
