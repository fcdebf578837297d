"""Pictures of a run: the loss curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def loss_curve(metrics_path: Path, out_path: Path, *, window: int = 25) -> Path:
  """Plots loss (raw and moving average) and the balancing loss from metrics.jsonl."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line]
  if not rows:
    raise ValueError(f"{metrics_path} holds no metrics to plot")
  steps = np.array([r["step"] for r in rows])
  fig, (ax_loss, ax_bal) = plt.subplots(1, 2, figsize=(10, 3.5))
  for name, color in (("loss", "tab:blue"), ("mse", "tab:green")):
    values = np.array([r[name] for r in rows])
    ax_loss.plot(steps, values, color=color, alpha=0.25, linewidth=0.8, label=name)
    if len(values) >= window:
      smooth = np.convolve(values, np.ones(window) / window, mode="valid")
      ax_loss.plot(steps[window - 1 :], smooth, color=color, label=f"{name} ({window}-step mean)")
  ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="flow-matching loss")
  ax_loss.legend()
  ax_bal.plot(steps, [r["balance_loss"] for r in rows], color="tab:orange", linewidth=0.8)
  # Balanced routing gives 1 with the Switch form; the paper's eq. 8 gives 1/M for uniform
  # probabilities up to 1 for one-hot ones, and more when groups collapse.
  ax_bal.set(xlabel="step", title="group balancing loss (before its weight)")
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return Path(out_path)
