"""benchmarks/trace_summary.py on a hand-made trace with known answers, and
benchmarks/profile_attention.py end to end on CPU (the GPU session's profile step)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location(
  "trace_summary", ROOT / "benchmarks" / "trace_summary.py"
)
trace_summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(trace_summary)


def _meta(pid, name, tid=None):
  kind = "process_name" if tid is None else "thread_name"
  event = {"ph": "M", "pid": pid, "name": kind, "args": {"name": name}}
  return event if tid is None else {**event, "tid": tid}


def _x(pid, tid, ts, dur, name):
  return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name}


def _gpu_trace():
  """One host thread with two annotated calls; a GPU with a stream line and XLA's derived op
  line (which repeats the kernels and must not count)."""
  return [
    _meta(1, "/host:CPU"),
    _meta(1, "python", tid=7),
    _meta(2, "/device:GPU:0"),
    _meta(2, "Stream #13(Compute)", tid=13),
    _meta(2, "XLA Ops", tid=99),
    _x(1, 7, 0, 100, "groups_32768_call_0"),
    _x(1, 7, 200, 50, "groups_32768_call_1"),
    # call 0: kernels at 10-30 and 20-40 overlap (busy 30), then 60-70: busy 40, lead 10,
    # gaps 20 (40-60), tail 30
    _x(2, 13, 10, 20, "sort_fusion"),
    _x(2, 13, 20, 20, "moga_group_fwd"),
    _x(2, 13, 60, 10, "moga_group_fwd"),
    _x(2, 99, 10, 60, "custom-call.1"),  # derived line: ignored
    # call 1: one kernel filling it from 205 to 245; one past the window (not counted)
    _x(2, 13, 205, 40, "moga_group_fwd"),
    _x(2, 13, 400, 40, "moga_group_fwd"),
    _x(2, 13, 500, 40, "fused_call_3"),  # a device event named like a call: not a call
  ]


def test_summary_of_a_known_trace():
  summary = trace_summary.summarise(_gpu_trace())
  assert summary["source"] == "device streams" and set(summary["labels"]) == {"groups_32768"}
  calls = summary["labels"]["groups_32768"]["per_call"]
  first, second = calls
  assert first["wall_us"] == 100 and first["busy_us"] == 40 and first["kernels"] == 3
  assert (first["lead_us"], first["gaps_us"], first["tail_us"]) == (10, 20, 30)
  assert first["attention_kernels_us"] == 30 and first["other_ops_us"] == 20
  assert first["by_name_us"] == {"sort_fusion": 20, "moga_group_fwd": 30}
  assert (second["busy_us"], second["lead_us"], second["gaps_us"], second["tail_us"]) == (
    40,
    5,
    0,
    5,
  )
  row = summary["labels"]["groups_32768"]
  assert row["calls"] == 2 and row["wall_us"] == 75 and row["busy_us"] == 40
  assert row["busy_fraction"] == pytest.approx(40 / 75)
  assert "groups_32768" in trace_summary.format_summary(summary)


def test_host_thunks_stand_in_without_a_device(tmp_path):
  events = [
    _meta(1, "/host:CPU"),
    _x(1, 7, 0, 10, "dense_8_call_0"),
    {**_x(1, 8, 2, 3, "fusion"), "args": {"hlo_op": "fusion"}},
    _x(1, 8, 6, 1, "MutexLock"),  # host bookkeeping, no hlo_op: not device work
  ]
  path = tmp_path / "t.trace.json.gz"
  with gzip.open(path, "wt") as f:
    json.dump({"traceEvents": events}, f)
  summary = trace_summary.summarise(trace_summary.load_events(tmp_path))
  assert summary["source"].startswith("host XLA ops")
  assert summary["labels"]["dense_8"]["busy_us"] == 3


@pytest.mark.subprocess
def test_profile_step_runs_on_cpu(tmp_path):
  done = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "profile_attention.py"),
      "--cpu",
      "--seq_lens=1024",
      "--calls=2",
      f"--out={tmp_path}",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
    timeout=300,
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  summary = json.loads((tmp_path / "profile.json").read_text())
  assert set(summary["labels"]) == {"groups_1024", "dense_1024"}
  for row in summary["labels"].values():
    assert row["calls"] == 2 and 0 < row["busy_us"] <= row["wall_us"]
    assert row["median_s_perf_counter"] > 0
  assert (tmp_path / "profile_trace.json.gz").stat().st_size > 0
  assert "busy %" in done.stdout
