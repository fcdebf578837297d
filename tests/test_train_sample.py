"""Training and sampling end to end: the loop (moga_jax.train.loop) in-process with its faults,
the commands' errors in-process through cli_main, and train.py / sample.py once each as a user
runs them (subprocesses: a kill -9 needs its own process anyway)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from commands import run_command

from moga_jax.data import video_io
from moga_jax.errors import ConfigError
from moga_jax.train import loop
from moga_jax.train.checkpoint import ConfigMismatchError
from moga_jax.train.config_files import load_config_module
from moga_jax.train.pipeline import pipeline_for

pytestmark = pytest.mark.subprocess

ROOT = Path(__file__).parents[1]
OVERRIDES = {
  "data.synthetic_videos": 6,
  "train.batch_size": 2,
  "model.dim": 32,
  "model.ffn_dim": 64,
  "model.num_layers": 2,
  "model.text_dim": 16,
  "train.warmup_steps": 2,
  "train.steps": 6,
  "train.checkpoint_every": 3,
  "sample.steps": 3,
}
TINY = [
  "--config",
  str(ROOT / "configs" / "tiny.py"),
  *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
]
PROMPTS = [
  "--prompt",
  "a red circle moving right on a blue background",
  "--prompt",
  "a cyan square moving up on a yellow background",
]


def tiny_config(**extra):
  """configs/tiny.py with OVERRIDES and `extra` ("section.field": value)."""
  cfg = load_config_module("tiny").get_config()
  for path, value in {**OVERRIDES, **extra}.items():
    section, field = path.split(".")
    cfg[section][field] = value
  return cfg


def _train(workdir: Path, faults=loop.NO_FAULTS, hooks=(), **extra) -> loop.TrainResult:
  cfg = tiny_config(**extra)
  return loop.train(cfg, workdir, pipeline_for(cfg), faults=faults, hooks=hooks)


def _command(program: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(ROOT / program), *TINY, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def _train_command(*args: str):
  return run_command("moga_jax.cli.train", "train.py", [*TINY, *args])


def _sample_command(*args: str):
  return run_command("moga_jax.cli.sample", "sample.py", [*TINY, *args])


def _losses(workdir: Path) -> list[tuple[int, float]]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [(r["step"], r["loss"]) for r in rows]


def _checkpoints(workdir: Path) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir() if not p.name.startswith("."))


def _one_line_error(outcome, message: str, program: str = "train.py", code: int = 2) -> None:
  """A user error (or a diverged run, code 3): that exit code and one `PROGRAM: error: ...`
  line, no Python traceback."""
  assert outcome.code == code, outcome.err[-3000:]
  assert f"{program}: error: {message}" in outcome.err
  assert "Traceback" not in outcome.err, outcome.err[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
  """One uninterrupted 6-step run (data under the run's parent, like `make demo`)."""
  workdir = tmp_path_factory.mktemp("runs") / "straight"
  result = _train(workdir)
  assert (result.step, result.preempted) == (6, False)
  return workdir


@pytest.mark.slow
@pytest.mark.xdist_group("trained")  # one worker builds the module fixture once
def test_training_writes_metrics_checkpoints_and_plots(trained):
  steps = [s for s, _ in _losses(trained)]
  assert steps == [1, 2, 3, 4, 5, 6]
  assert _checkpoints(trained) == ["3", "6"]
  assert (trained / "loss.png").stat().st_size > 0
  assert list((trained / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_train_py_killed_resumes_with_identical_losses(trained):
  """train.py as a user runs it, SIGKILLed after step 5 (a crash: no save-on-exit); the same
  command (here in-process) resumes from step 3 and logs the uninterrupted losses bit for bit."""
  workdir = trained.parent / "crashed"
  killed = _command("train.py", "--workdir", str(workdir), "--crash_after_step=5")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert [s for s, _ in _losses(workdir)] == [1, 2, 3, 4, 5]  # 4 and 5 were never saved
  resumed = _train_command("--workdir", str(workdir))
  assert resumed.code == 0, resumed.err[-3000:]
  assert f"checkpoints: {workdir / 'checkpoints'}" in resumed.out
  assert _losses(workdir) == _losses(trained)


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_sample_py_writes_a_decodable_two_shot_video(trained):
  output = trained / "out" / "sample.mp4"
  done = _command("sample.py", "--workdir", str(trained), *PROMPTS, "--output", str(output))
  assert done.returncode == 0, done.stderr[-3000:]
  frames = video_io.read_video(output)
  assert frames.shape == (16, 32, 32, 3)  # 2 shots x 8 frames
  assert output.with_suffix(".png").stat().st_size > 0


def test_sample_without_checkpoint_says_so(tmp_path):
  done = _sample_command("--workdir", str(tmp_path / "empty"), *PROMPTS)
  _one_line_error(done, f"no checkpoint in {tmp_path / 'empty' / 'checkpoints'}", "sample.py")
  assert "train first" in done.err


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_sample_with_a_mismatched_config_names_the_fields(trained):
  done = _sample_command("--workdir", str(trained), *PROMPTS, "--config.model.dim=64")
  _one_line_error(done, f"the checkpoint in {trained / 'checkpoints'} was trained", "sample.py")
  assert "dim: checkpoint 32 vs config 64" in done.err


def test_bad_config_fails_before_training(tmp_path):
  done = _train_command("--workdir", str(tmp_path / "bad"), "--config.model.num_heads=3")
  _one_line_error(done, "config.model.num_heads (3) must divide dim (32), the model width")
  assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
  bf16 = _train_command("--workdir", str(tmp_path / "bf16"), "--config.model.param_dtype=bfloat16")
  _one_line_error(bf16, "config.model.param_dtype='bfloat16' is for sampling: train in float32")


def test_user_errors_print_one_line(tmp_path):
  nowhere = tmp_path / "nowhere"
  missing = _train_command("--workdir", str(tmp_path / "a"), f"--config.data.source_dir={nowhere}")
  _one_line_error(missing, f"config.data.source_dir {nowhere} has no captions.jsonl")
  source = tmp_path / "clips"
  source.mkdir()
  (source / "captions.jsonl").write_text('{"video": "a.mp4", "shots": [\n')
  malformed = _train_command("--workdir", str(tmp_path / "b"), f"--config.data.source_dir={source}")
  _one_line_error(malformed, f"{source / 'captions.jsonl'}:1: not valid JSON")


@pytest.mark.parametrize("error", [ValueError, ConfigError])
def test_a_bug_in_training_keeps_its_traceback(tmp_path, monkeypatch, error):
  """A bare ValueError raised inside the training step (as jax or orbax raise them for bugs) is
  not a user's mistake: it leaves cli_main with its traceback; a ConfigError is one line."""

  def make_train_step(cfg, train_state, loss):
    def step(state, batch, key):
      raise error("raised inside the step")

    return step

  monkeypatch.setattr(loop, "make_train_step", make_train_step)
  argv = ("--workdir", str(tmp_path / "run"), "--config.train.steps=1")
  if error is ConfigError:
    _one_line_error(_train_command(*argv), "raised inside the step")
  else:
    with pytest.raises(ValueError, match="raised inside the step"):
      _train_command(*argv)


def _main_thread_only():
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers are installed from the main thread only")


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_sigterm_saves_the_step_and_resumes_identically(trained, capsys):
  """Preemption: SIGTERM after step 4 (a scheduler's grace period) finishes the step, saves it
  and returns (train.py then exits 0); the signal handler is the caller's again afterwards, and
  the same run then continues to the losses of the uninterrupted run."""
  _main_thread_only()
  workdir = trained.parent / "preempted"
  before = signal.getsignal(signal.SIGTERM)
  result = _train(workdir, faults=loop.Faults(term_after=4))
  assert signal.getsignal(signal.SIGTERM) is before
  assert (result.step, result.preempted) == (4, True)
  assert "received SIGTERM" in capsys.readouterr().err
  assert _checkpoints(workdir) == ["3", "4"]
  assert [s for s, _ in _losses(workdir)] == [1, 2, 3, 4]
  _train(workdir)
  assert _losses(workdir) == _losses(trained)


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_non_finite_loss_stops_without_saving_then_resumes(trained):
  """A NaN batch at step 5: exit 3 naming the step and quantity, and step 5 (or anything after
  the last good checkpoint, 3) is never saved, not even by the save-on-exit; rerun without the
  fault, the run resumes from 3 to the uninterrupted losses."""
  workdir = trained.parent / "diverged"
  done = _train_command("--workdir", str(workdir), "--poison_batch_at_step=5")
  _one_line_error(done, "step 5: non-finite loss = nan", code=3)
  assert _checkpoints(workdir) == ["3"]
  _train(workdir)
  assert _losses(workdir) == _losses(trained)


@pytest.mark.slow
def test_skip_nonfinite_steps_drops_the_bad_update(tmp_path):
  """With config.train.skip_nonfinite_steps = 1 the NaN step is logged as skipped, its update
  dropped (the next loss is finite), and the run finishes; a second bad step would stop it."""
  workdir = tmp_path / "skipping"
  _train(workdir, faults=loop.Faults(poison_at=5), **{"train.skip_nonfinite_steps": 1})
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["skipped"] for r in rows] == [0, 0, 0, 0, 1, 0]
  assert np.isnan(rows[4]["loss"]) and np.isfinite(rows[5]["loss"])
  assert _checkpoints(workdir) == ["3", "6"]


class _Crash(Exception):
  """Ends a run from a hook: like a crash, nothing after the last checkpoint is saved."""


@pytest.mark.slow
def test_ema_and_gradient_accumulation_resume_exactly_and_sample(tmp_path, caplog):
  """EMA and accumulation state live in the optimizer's state: stopped after step 5 (between
  the updates of steps 4 and 6) and resumed from step 3, the run logs the uninterrupted losses;
  resuming with other optimizer settings fails by name; sample.py samples the EMA."""
  options = {"train.ema_decay": 0.9, "train.grad_accum_steps": 2}
  straight, crashed = tmp_path / "straight", tmp_path / "crashed"
  _train(straight, **options)

  def crash(model, step, metrics):
    if step == 5:
      raise _Crash

  with pytest.raises(_Crash):
    _train(crashed, hooks=[loop.Every(5, crash)], **options)
  assert _checkpoints(crashed) == ["3"]
  with pytest.raises(ConfigMismatchError, match="trained with another optimizer config") as e:
    _train(crashed, **{"train.ema_decay": 0.9})
  assert "grad_accum_steps: checkpoint 2 vs config 1" in str(e.value)
  _train(crashed, **options)
  assert _losses(crashed) == _losses(straight)
  flags_ = [f"--config.{k}={v}" for k, v in options.items()]
  done = _sample_command("--workdir", str(straight), *flags_, *PROMPTS)
  assert done.code == 0, done.err[-3000:]
  assert "using the EMA of the weights" in caplog.text


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_unreadable_latest_checkpoint_falls_back_to_an_older_one(trained, caplog):
  """A truncated newest checkpoint (a half-finished copy): resume warns naming it, moves it
  aside (never deletes it), restarts from step 3 and logs the uninterrupted losses."""
  workdir = trained.parent / "truncated"
  shutil.copytree(trained, workdir)
  for f in (workdir / "checkpoints" / "6" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 64:
      with f.open("r+b") as handle:
        handle.truncate(32)
  _train(workdir)
  assert f"checkpoint {workdir / 'checkpoints' / '6'} cannot be read" in caplog.text
  assert _losses(workdir) == _losses(trained)
  names = _checkpoints(workdir)
  assert names[:2] == ["3", "6"] and names[2].startswith("6.unreadable-"), names


@pytest.mark.slow
@pytest.mark.xdist_group("trained")
def test_hooks_run_at_start_every_n_steps_and_at_the_end(trained):
  """A hook sees the model and that step's fetched metrics; a run without a workdir (the
  reproduction's) writes nothing, needs a source folder and reports its step time."""
  cfg = tiny_config(**{"train.steps": 3})
  seen = []
  hook = loop.Every(2, lambda model, step, metrics: seen.append((step, sorted(metrics))), True)
  with pytest.raises(ConfigError, match=r"without a workdir needs config\.data\.source_dir"):
    loop.train(cfg, None, pipeline_for(cfg), hooks=[hook])
  cfg.data.source_dir = str(trained.parent / "data" / "synthetic")  # the trained run's clips
  before = sorted(trained.parent.rglob("*"))
  result = loop.train(cfg, None, pipeline_for(cfg), hooks=[hook])
  assert sorted(trained.parent.rglob("*")) == before
  metrics = ["balance_loss", "grad_norm", "loss", "mse"]
  assert seen == [(0, []), (2, metrics), (3, metrics)]
  assert result.step == 3 and result.step_s > 0 and not result.preempted
  assert result.model().dit is not None
