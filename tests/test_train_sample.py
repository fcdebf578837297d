"""train.py and sample.py end to end, as a user runs them (subprocesses, tiny overrides)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moga_jax.data import video_io

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).parents[1]
TINY = [
  "--config",
  str(ROOT / "configs" / "tiny.py"),
  "--config.data.synthetic_videos=6",
  "--config.train.batch_size=2",
  "--config.model.dim=32",
  "--config.model.ffn_dim=64",
  "--config.model.num_layers=2",
  "--config.model.text_dim=16",
  "--config.train.warmup_steps=2",
  "--config.train.steps=6",
  "--config.train.checkpoint_every=3",
  "--config.sample.steps=3",
]
PROMPTS = [
  "--prompt",
  "a red circle moving right on a blue background",
  "--prompt",
  "a cyan square moving up on a yellow background",
]


def _run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
  result = subprocess.run(
    [sys.executable, str(ROOT / script), *TINY, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  if check and result.returncode != 0:
    raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result


def _losses(workdir: Path) -> list[tuple[int, float]]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [(r["step"], r["loss"]) for r in rows]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
  """One uninterrupted 6-step run (data under the run's parent, like `make demo`)."""
  workdir = tmp_path_factory.mktemp("runs") / "straight"
  _run("train.py", "--workdir", str(workdir))
  return workdir


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture once
def test_training_writes_metrics_checkpoints_and_plots(trained):
  steps = [s for s, _ in _losses(trained)]
  assert steps == [1, 2, 3, 4, 5, 6]
  assert sorted(p.name for p in (trained / "checkpoints").iterdir() if p.name.isdigit()) == [
    "3",
    "6",
  ]
  assert (trained / "loss.png").stat().st_size > 0
  assert list((trained / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture once
def test_resume_after_kill_9_logs_identical_losses(trained):
  workdir = trained.parent / "crashed"
  killed = _run("train.py", "--workdir", str(workdir), "--crash_after_step=5", check=False)
  assert killed.returncode == -signal.SIGKILL
  assert [s for s, _ in _losses(workdir)] == [1, 2, 3, 4, 5]  # 4 and 5 were never saved
  _run("train.py", "--workdir", str(workdir))  # the same command resumes from step 3
  assert _losses(workdir) == _losses(trained)  # bit for bit, steps 4-6 recomputed


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture once
def test_sample_writes_a_decodable_two_shot_video(trained):
  output = trained / "out" / "sample.mp4"
  _run("sample.py", "--workdir", str(trained), *PROMPTS, "--output", str(output))
  frames = video_io.read_video(output)
  assert frames.shape == (16, 32, 32, 3)  # 2 shots x 8 frames
  assert output.with_suffix(".png").stat().st_size > 0


def test_sample_without_checkpoint_says_so(tmp_path):
  result = _run("sample.py", "--workdir", str(tmp_path / "empty"), *PROMPTS, check=False)
  assert result.returncode != 0
  assert "no checkpoint in" in result.stderr and "train first" in result.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture once
def test_sample_with_a_mismatched_config_names_the_fields(trained):
  result = _run(
    "sample.py", "--workdir", str(trained), *PROMPTS, "--config.model.dim=64", check=False
  )
  assert result.returncode != 0
  assert "dim: checkpoint 32 vs config 64" in result.stderr


def _one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
  """A user error: exit 2 and `train.py: error: ...`, no Python traceback."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert f"train.py: error: {message}" in result.stderr
  assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_bad_config_fails_before_training(tmp_path):
  result = _run(
    "train.py", "--workdir", str(tmp_path / "bad"), "--config.model.num_heads=3", check=False
  )
  _one_line_error(result, "config.model.num_heads (3) must divide config.model.dim (32)")
  assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
  bf16 = _run(
    "train.py",
    "--workdir",
    str(tmp_path / "bf16"),
    "--config.model.param_dtype=bfloat16",
    check=False,
  )
  _one_line_error(bf16, "config.model.param_dtype='bfloat16' is for sampling: train in float32")


def test_user_errors_print_one_line(tmp_path):
  missing = _run(
    "train.py",
    "--workdir",
    str(tmp_path / "a"),
    f"--config.data.source_dir={tmp_path / 'nowhere'}",
    check=False,
  )
  _one_line_error(missing, f"config.data.source_dir {tmp_path / 'nowhere'} has no captions.jsonl")
  source = tmp_path / "clips"
  source.mkdir()
  (source / "captions.jsonl").write_text('{"video": "a.mp4", "shots": [\n')
  malformed = _run(
    "train.py", "--workdir", str(tmp_path / "b"), f"--config.data.source_dir={source}", check=False
  )
  _one_line_error(malformed, f"{source / 'captions.jsonl'}:1: not valid JSON")


def _checkpoints(workdir: Path) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir() if not p.name.startswith("."))


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_sigterm_saves_the_step_exits_0_and_resumes_identically(trained):
  """Preemption: SIGTERM after step 4 (a scheduler's grace period) finishes the step, saves it
  and exits 0; the same command then continues to the losses of the uninterrupted run."""
  workdir = trained.parent / "preempted"
  result = _run("train.py", "--workdir", str(workdir), "--sigterm_after_step=4", check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "received SIGTERM" in result.stderr
  assert _checkpoints(workdir) == ["3", "4"]
  assert [s for s, _ in _losses(workdir)] == [1, 2, 3, 4]
  _run("train.py", "--workdir", str(workdir))
  assert _losses(workdir) == _losses(trained)


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_non_finite_loss_stops_without_saving_then_resumes(trained):
  """A NaN batch at step 5: exit 3 naming the step and quantity, and step 5 (or anything after
  the last good checkpoint, 3) is never saved, not even by the save-on-exit; rerun without the
  fault, the run resumes from 3 to the uninterrupted losses."""
  workdir = trained.parent / "diverged"
  result = _run("train.py", "--workdir", str(workdir), "--poison_batch_at_step=5", check=False)
  assert result.returncode == 3, result.stderr[-3000:]
  assert "train.py: error: step 5: non-finite loss = nan" in result.stderr
  assert "Traceback" not in result.stderr
  assert _checkpoints(workdir) == ["3"]
  _run("train.py", "--workdir", str(workdir))
  assert _losses(workdir) == _losses(trained)


@pytest.mark.slow
def test_skip_nonfinite_steps_drops_the_bad_update(tmp_path):
  """With config.train.skip_nonfinite_steps = 1 the NaN step is logged as skipped, its update
  dropped (the next loss is finite), and the run finishes; a second bad step would stop it."""
  workdir = tmp_path / "skipping"
  _run(
    "train.py",
    "--workdir",
    str(workdir),
    "--poison_batch_at_step=5",
    "--config.train.skip_nonfinite_steps=1",
  )
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["skipped"] for r in rows] == [0, 0, 0, 0, 1, 0]
  assert np.isnan(rows[4]["loss"]) and np.isfinite(rows[5]["loss"])
  assert _checkpoints(workdir) == ["3", "6"]


@pytest.mark.slow
def test_ema_and_gradient_accumulation_resume_exactly_and_sample(tmp_path):
  """EMA and accumulation state live in the optimizer's state: killed after step 5 (between
  the updates of steps 4 and 6) and resumed from step 3, the run logs the uninterrupted losses;
  resuming with other optimizer settings fails by name; sample.py samples the EMA."""
  options = ["--config.train.ema_decay=0.9", "--config.train.grad_accum_steps=2"]
  straight, crashed = tmp_path / "straight", tmp_path / "crashed"
  _run("train.py", "--workdir", str(straight), *options)
  killed = _run(
    "train.py", "--workdir", str(crashed), *options, "--crash_after_step=5", check=False
  )
  assert killed.returncode == -signal.SIGKILL
  other = _run("train.py", "--workdir", str(crashed), options[0], check=False)
  _one_line_error(
    other, f"the checkpoint in {crashed / 'checkpoints'} was trained with another optimizer config"
  )
  assert "grad_accum_steps: checkpoint 2 vs config 1" in other.stderr
  _run("train.py", "--workdir", str(crashed), *options)
  assert _losses(crashed) == _losses(straight)
  result = _run("sample.py", "--workdir", str(straight), *options, *PROMPTS)
  assert "using the EMA of the weights" in result.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_unreadable_latest_checkpoint_falls_back_to_an_older_one(trained):
  """A truncated newest checkpoint (a half-finished copy): resume warns naming it, moves it
  aside (never deletes it), restarts from step 3 and logs the uninterrupted losses."""
  workdir = trained.parent / "truncated"
  shutil.copytree(trained, workdir)
  for f in (workdir / "checkpoints" / "6" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 64:
      with f.open("r+b") as handle:
        handle.truncate(32)
  result = _run("train.py", "--workdir", str(workdir))
  assert f"checkpoint {workdir / 'checkpoints' / '6'} cannot be read" in result.stderr
  assert _losses(workdir) == _losses(trained)
  names = _checkpoints(workdir)
  assert names[:2] == ["3", "6"] and names[2].startswith("6.unreadable-"), names
