"""A run's metrics on disk: WORKDIR/metrics.jsonl (one JSON line per step) and TensorBoard.

A resumed run recomputes the steps after its checkpoint, so their old lines are dropped when the
log opens: the file then holds exactly the lines an uninterrupted run would have written.
"""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
  """WORKDIR/metrics.jsonl (one line per step) and TensorBoard events in WORKDIR/tensorboard."""

  def __init__(self, workdir: Path, resume_step: int):
    self.path = Path(workdir) / "metrics.jsonl"
    if self.path.exists():
      lines = [
        ln
        for ln in self.path.read_text().splitlines()
        if ln.strip() and json.loads(ln)["step"] <= resume_step
      ]
      self.path.write_text("".join(ln + "\n" for ln in lines))
    self._file = self.path.open("a")
    from tensorboardX import SummaryWriter

    self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    self._file.write(json.dumps({"step": step, **metrics}) + "\n")
    self._file.flush()
    for name, value in metrics.items():
      self._tb.add_scalar(f"train/{name}", value, step)

  def close(self) -> None:
    self._file.close()
    self._tb.close()
