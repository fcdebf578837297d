"""train.py runs for the training benchmarks (train_loop.py, train_dtype.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run(workdir: Path, steps: int, *overrides: str) -> list[dict]:
  """train.py on configs/tiny.py for `steps` steps (no checkpoints) with extra --config.*
  overrides; returns its metrics rows."""
  cmd = [
    sys.executable,
    str(ROOT / "train.py"),
    "--config",
    str(ROOT / "configs/tiny.py"),
    "--workdir",
    str(workdir),
    f"--config.train.steps={steps}",
    f"--config.train.checkpoint_every={10**9}",
    *overrides,
  ]
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
