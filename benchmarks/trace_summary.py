"""Summarise a jax.profiler trace: for each annotated call, how long the device ran kernels and
how long it sat idle (launch, gaps between kernels, the wait at the end).

  python benchmarks/trace_summary.py TRACE [--json_out summary.json]

TRACE is a Chrome-format trace (`*.trace.json.gz` or `perfetto_trace.json.gz`, as
`jax.profiler.start_trace` writes under LOG_DIR/plugins/profile/RUN/), or LOG_DIR itself (its
newest run is read). Calls are host annotations named `LABEL_call_I`
(`jax.profiler.TraceAnnotation`, as benchmarks/profile_attention.py makes them); every call
should block until its outputs are ready, so its device work lies inside its window.

Per call (a host event; device events of that name are not calls), from the device's kernel
events inside the window (GPU: the CUPTI stream lines;
without a device process, e.g. on CPU: the host's XLA thunk events, which carry `hlo_op`):
  wall     the annotation's length;
  busy     the union of the kernels' intervals (overlapping kernels counted once);
  lead     window start -> first kernel: host dispatch and launch before the device starts;
  gaps     idle time between the first kernel's start and the last one's end;
  tail     last kernel's end -> window end: the host noticing the result;
  kernels  kernel events; and time by kernel name, split into attention kernels (names
           matching --kernel_regex: the Pallas kernels, cuDNN's flash attention) and the rest
           (layout work: sorts, gathers, scatters, fusions).
A label's row is the median over its calls. busy / wall near 1 means the kernels themselves
are the cost; a large lead, gaps or tail means launches and host work are.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

CALL = re.compile(r"^(?P<label>.+)_call_(?P<index>\d+)$")
KERNEL_REGEX = r"moga|pallas|triton|sdpa|flash|fmha|cudnn"
# Derived lines of a GPU trace that repeat the kernels' time (XLA's op and module view).
_DERIVED_THREADS = ("XLA Ops", "XLA Modules", "Steps", "Framework", "Source code")


def find_trace(path: str | Path) -> Path:
  """The trace file itself, or the newest Chrome-format trace under a profiler log dir."""
  path = Path(path)
  if path.is_file():
    return path
  found = sorted(
    [*path.rglob("*.trace.json.gz"), *path.rglob("perfetto_trace.json.gz")],
    key=lambda p: (p.stat().st_mtime, p.name.endswith(".trace.json.gz")),
  )
  if not found:
    raise FileNotFoundError(f"no *.trace.json.gz or perfetto_trace.json.gz under {path}")
  return found[-1]


def load_events(path: str | Path) -> list[dict]:
  path = find_trace(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt") as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def _names(events, kind: str) -> dict:
  key = (lambda e: e["pid"]) if kind == "process_name" else (lambda e: (e["pid"], e.get("tid")))
  return {key(e): e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == kind}


def kernel_events(events) -> tuple[list[dict], str]:
  """(the events that are device work, where they came from): the GPU's stream lines (CUPTI),
  else any device process's lines but XLA's derived ones, else the host's XLA thunks."""
  processes, threads = _names(events, "process_name"), _names(events, "thread_name")
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  device = {pid for pid, name in processes.items() if name.startswith("/device:")}
  device -= {pid for pid, name in processes.items() if "CUSTOM" in name}
  on_device = [e for e in complete if e["pid"] in device]
  streams = [e for e in on_device if threads.get((e["pid"], e.get("tid")), "").startswith("Stream")]
  if streams:
    return streams, "device streams"
  lines = [
    e
    for e in on_device
    if not threads.get((e["pid"], e.get("tid")), "").startswith(_DERIVED_THREADS)
  ]
  if lines:
    return lines, "device lines"
  return [e for e in complete if "hlo_op" in e.get("args", {})], "host XLA ops (no device in trace)"


def _union(intervals) -> float:
  total, end = 0.0, None
  for a, b in sorted(intervals):
    if end is None or a > end:
      total += b - a
      end = b
    elif b > end:
      total += b - end
      end = b
  return total


def call_stats(window: tuple[float, float], kernels, kernel_regex: str = KERNEL_REGEX) -> dict:
  """One call's numbers (microseconds) from the kernel events that start inside its window,
  clipped to it."""
  start, end = window
  inside = [
    (max(e["ts"], start), min(e["ts"] + e["dur"], end), e["name"])
    for e in kernels
    if start <= e["ts"] < end
  ]
  by_name = defaultdict(float)
  for a, b, name in inside:
    by_name[name] += b - a
  pattern = re.compile(kernel_regex, re.IGNORECASE)
  busy = _union((a, b) for a, b, _ in inside)
  first = min((a for a, _, _ in inside), default=end)
  last = max((b for _, b, _ in inside), default=end)
  return {
    "wall_us": end - start,
    "busy_us": busy,
    "lead_us": first - start,
    "gaps_us": max(0.0, (last - first) - busy) if inside else 0.0,
    "tail_us": end - last,
    "kernels": len(inside),
    "attention_kernels_us": _union((a, b) for a, b, n in inside if pattern.search(n)),
    "other_ops_us": _union((a, b) for a, b, n in inside if not pattern.search(n)),
    "by_name_us": dict(by_name),
  }


def summarise(events, kernel_regex: str = KERNEL_REGEX) -> dict:
  """{"source": where the kernels came from, "labels": {label: medians + per-call stats}}."""
  kernels, source = kernel_events(events)
  hosts = {pid for pid, name in _names(events, "process_name").items() if name.startswith("/host")}
  calls = defaultdict(list)
  for e in events:
    match = CALL.match(e.get("name", "")) if e.get("ph") == "X" and e["pid"] in hosts else None
    if match:
      calls[match["label"]].append((int(match["index"]), (e["ts"], e["ts"] + e["dur"])))
  labels = {}
  for label, found in calls.items():
    stats = [call_stats(w, kernels, kernel_regex) for _, w in sorted(found)]
    median = {k: statistics.median(s[k] for s in stats) for k in stats[0] if k != "by_name_us"}
    names = defaultdict(float)
    for s in stats:
      for name, us in s["by_name_us"].items():
        names[name] += us / len(stats)
    top = sorted(names.items(), key=lambda kv: -kv[1])[:8]
    labels[label] = {
      "calls": len(stats),
      **median,
      "busy_fraction": median["busy_us"] / median["wall_us"] if median["wall_us"] else 0.0,
      "top_kernels_us_per_call": dict(top),
      "per_call": stats,
    }
  return {"source": source, "kernel_regex": kernel_regex, "labels": labels}


def format_summary(summary: dict) -> str:
  ms = lambda us: f"{us / 1e3:.3f}"
  header = (
    "label",
    "calls",
    "wall ms",
    "busy ms",
    "busy %",
    "attn kernels ms",
    "other ops ms",
    "lead ms",
    "gaps ms",
    "tail ms",
    "kernels",
  )
  rows = [header]
  for label, s in summary["labels"].items():
    rows.append(
      (
        label,
        str(s["calls"]),
        ms(s["wall_us"]),
        ms(s["busy_us"]),
        f"{100 * s['busy_fraction']:.0f}%",
        ms(s["attention_kernels_us"]),
        ms(s["other_ops_us"]),
        ms(s["lead_us"]),
        ms(s["gaps_us"]),
        ms(s["tail_us"]),
        f"{s['kernels']:g}",
      )
    )
  widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
  lines = [f"kernels from: {summary['source']}; medians over each label's calls"]
  lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
  for label, s in summary["labels"].items():
    lines.append(f"{label}: top kernels, ms per call")
    lines += [
      f"  {us / 1e3:9.3f}  {name[:110]}" for name, us in s["top_kernels_us_per_call"].items()
    ]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("trace", help="a *.trace.json.gz / perfetto_trace.json.gz, or a log dir")
  parser.add_argument("--json_out", help="write the summary as JSON here")
  parser.add_argument("--kernel_regex", default=KERNEL_REGEX, help="attention kernels' names")
  args = parser.parse_args(argv)
  summary = summarise(load_events(args.trace), args.kernel_regex)
  summary["trace"] = str(find_trace(args.trace))
  print(format_summary(summary))
  if args.json_out:
    Path(args.json_out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()
