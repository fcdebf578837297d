"""train.py and sample.py end to end, as a user runs them (subprocesses, tiny overrides)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from moga_jax import video_io

ROOT = Path(__file__).parents[1]
TINY = [
    "--config", str(ROOT / "configs" / "tiny.py"),
    "--config.data.synthetic_videos=6", "--config.train.batch_size=2",
    "--config.model.dim=32", "--config.model.ffn_dim=64", "--config.model.num_layers=2",
    "--config.model.text_dim=16", "--config.train.warmup_steps=2",
    "--config.train.steps=6", "--config.train.checkpoint_every=3", "--config.sample.steps=3",
]
PROMPTS = ["--prompt", "a red circle moving right on a blue background",
           "--prompt", "a cyan square moving up on a yellow background"]


def _run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, str(ROOT / script), *TINY, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
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
  assert sorted(p.name for p in (trained / "checkpoints").iterdir() if p.name.isdigit()) == \
      ["3", "6"]
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
  frames = video_io.read_mp4(output)
  assert frames.shape == (16, 32, 32, 3)  # 2 shots x 8 frames
  assert output.with_suffix(".png").stat().st_size > 0


def test_sample_without_checkpoint_says_so(tmp_path):
  result = _run("sample.py", "--workdir", str(tmp_path / "empty"), *PROMPTS, check=False)
  assert result.returncode != 0
  assert "no checkpoint in" in result.stderr and "train first" in result.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture once
def test_sample_with_a_mismatched_config_names_the_fields(trained):
  result = _run("sample.py", "--workdir", str(trained), *PROMPTS, "--config.model.dim=64",
                check=False)
  assert result.returncode != 0
  assert "dim: checkpoint 32 vs config 64" in result.stderr


def test_bad_config_fails_before_training(tmp_path):
  result = _run("train.py", "--workdir", str(tmp_path / "bad"), "--config.model.num_heads=3",
                check=False)
  assert result.returncode != 0
  assert "config.model.num_heads (3) must divide config.model.dim (32)" in result.stderr
  assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
