"""`make gpu-check CPU=1`: the GPU machine's first script, run here in interpret mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.subprocess
@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_every_check_passes(tmp_path):
  done = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(tmp_path)],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=900,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = json.loads((tmp_path / "gpu_check_cpu.json").read_text())
  assert report["interpret"] and report["backend"] == "cpu"
  assert len(report["checks"]) == 12 and all(r["ok"] for r in report["checks"])
  # Every error is a real comparison: finite, and nonzero (identical outputs would mean the
  # kernel and the reference were the same computation).
  for row in report["checks"]:
    for field in ("out_error", "dq_error", "dk_error", "dv_error"):
      assert 0 < row[field] <= row["tolerance"]
  modes = {(r["op"], r["mode"]) for r in report["speed"] if "seconds" in r}
  assert modes == {
    (op, m) for op in ("dense", "pallas_gpu") for m in ("forward", "forward+backward")
  }
  assert "| tokens | mode |" in done.stdout
