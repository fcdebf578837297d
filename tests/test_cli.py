"""The commands (moga_jax.cli): a missing extra is one line naming the pip command (exit 2),
an empty videos folder says so (exit 2), and --help lists the command's own flags. In-process
where it can be (tests/commands.py); a subprocess where an entry point itself is the subject."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from commands import run_command

from moga_jax import cli

ROOT = Path(__file__).parents[1]

# Starts `code` after a sys.meta_path finder that refuses the packages in `blocked`, as if they
# were not installed.
_BLOCKER = """
import importlib.abc, runpy, sys
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.partition(".")[0] in {blocked!r}:
      raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Refuse())
sys.argv = {argv!r}
"""


def _run(code: str, argv: list[str], blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
  script = _BLOCKER.format(blocked=set(blocked), argv=argv) + textwrap.dedent(code)
  return subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
  )


def test_missing_extra_line_names_the_pip_command():
  line = cli.missing_extra_line("moga-train", ModuleNotFoundError("x", name="ml_collections.x"))
  assert line == (
    "moga-train: error: ml_collections is not installed; this command needs the `train` "
    "extra: pip install 'moga-jax[train]'"
  )
  assert cli.missing_extra_line("moga-train", ModuleNotFoundError("x", name="numpyy")) is None
  # a command needing `shots` (which includes `train`) names `shots`; `wan` stays `wan`
  tqdm, tokenizers = (ModuleNotFoundError("x", name=n) for n in ("tqdm", "tokenizers"))
  assert cli.missing_extra_line("moga-shots", tqdm, "shots").endswith("'moga-jax[shots]'")
  assert cli.missing_extra_line("moga-shots", tokenizers, "shots").endswith("'moga-jax[wan]'")
  assert cli.missing_extra_line("p", ImportError("no name")) is None


def test_train_without_the_train_extra_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
  """In-process: ml_collections refused on import (None in sys.modules), as if not installed."""
  monkeypatch.setitem(sys.modules, "ml_collections", None)
  monkeypatch.delitem(sys.modules, "moga_jax.cli.train", raising=False)
  monkeypatch.setattr(sys, "argv", ["train.py", "--workdir", str(tmp_path / "run")])
  with pytest.raises(SystemExit) as done:
    cli.train_command("train.py")
  assert done.value.code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
    "train.py: error: ml_collections is not installed; this command needs the `train` extra: "
    "pip install 'moga-jax[train]'"
  ]
  assert not (tmp_path / "run").exists()


@pytest.mark.subprocess
@pytest.mark.parametrize("entry", ["module", "command"])
def test_shots_without_pyscenedetect_is_one_line_exit_2(tmp_path, entry):
  """`python -m moga_jax.data.shots` and `moga-shots`, before any video is decoded."""
  (tmp_path / "clip.mp4").write_bytes(b"not decoded")
  code = {
    "module": 'runpy.run_module("moga_jax.data.shots", run_name="__main__", alter_sys=True)',
    "command": "from moga_jax.cli import shots_command; shots_command()",
  }[entry]
  program = {"module": "moga_jax.data.shots", "command": "moga-shots"}[entry]
  done = _run(code, [program, "--videos", str(tmp_path), "--list"], blocked=("scenedetect",))
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.strip().splitlines() == [
    f"{program}: error: scenedetect is not installed; this command needs the `shots` extra: "
    "pip install 'moga-jax[shots]'"
  ]
  assert done.stdout == ""


@pytest.mark.parametrize("mode", [["--list"], ["--out", "OUT"]])
def test_shots_on_a_folder_without_videos_says_so(tmp_path, mode):
  videos = tmp_path / "videos"
  (videos / "sub").mkdir(parents=True)
  (videos / "notes.txt").write_text("no video here")
  argv = [a.replace("OUT", str(tmp_path / "out")) for a in mode]
  done = run_command(
    "moga_jax.data.shots", "moga_jax.data.shots", ["--videos", str(videos), *argv], "_define_flags"
  )
  assert done.code == 2, done.err[-3000:]
  assert done.err.strip().splitlines() == [
    f"moga_jax.data.shots: error: --videos {videos} holds no video files "
    "(.mp4, .m4v, .mov, .mkv, .webm, .avi)"
  ]
  assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_help_lists_the_commands_own_flags():
  done = subprocess.run(
    [sys.executable, "sample.py", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300
  )
  assert "Sample a multi-shot video" in done.stdout, done.stderr[-3000:]  # (absl exits 1)
  for flag in ("--workdir", "--weights", "--prompt", "--negative_prompt"):
    assert flag in done.stdout, done.stdout[-3000:]
