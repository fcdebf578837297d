"""Mesh, sharding rules, Ulysses sequence parallelism and multi-host training.

The multi-device checks run in fresh processes with fake CPU devices (the device count is fixed
when jax initialises). `pytest -k "shard or mesh or distributed"` selects this file's tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moga_jax.parallel.sharding import (
  ShardingRules,
  param_logical_axes,
  param_spec,
  resolve_mesh_shape,
)
from moga_jax.train.config_files import load_config_module
from moga_jax.train.run_config import RunConfig

tiny = load_config_module("tiny")

ROOT = Path(__file__).parents[1]
P = __import__("jax").P


def _env(devices: int | None) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = str(ROOT)
  env["JAX_PLATFORMS"] = "cpu"  # fake CPU devices, also on a GPU or TPU machine
  return env


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize(
  "mesh,routing",
  [
    ("data=2,context=4", "per_head"),
    ("fsdp=2,context=2,tensor=2", "shared"),
    ("fsdp=2,context=2,share=2", "shared"),  # past the head count: work shares
  ],
)
def test_sharded_model_equals_unsharded_on_a_mesh(mesh, routing):
  """Forward, gradients and one train step on 8 fake devices == one device."""
  stdout = _run_script("sharded_model.py", mesh, routing)
  assert f"{mesh} {routing}: sharded == unsharded" in stdout


def _run_script(name: str, *args: str) -> str:
  """Runs tests/scripts/NAME in a fresh process (its own fake device count); its stdout."""
  result = subprocess.run(
    [sys.executable, str(ROOT / "tests" / "scripts" / name), *args],
    capture_output=True,
    text=True,
    env=_env(None),
    timeout=900,
    check=False,
  )
  assert result.returncode == 0, result.stdout + result.stderr[-4000:]
  return result.stdout


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize(
  "mesh,implementation",
  [
    ("context=2,share=4,data=2", "xla"),
    ("share=8,data=2", "xla"),
    ("context=2,share=4,data=2", "pallas_tpu"),
    ("context=4,share=4", "pallas_gpu"),
  ],
)
def test_attention_split_past_the_head_count_equals_unsharded(mesh, implementation):
  """The paper's block on 16 fake devices, its sequence split context x share ways (4 heads:
  Ulysses alone stops at 4): output and every gradient equal one device's, with skewed groups
  (one empty) and random shot layouts (tests/scripts/shared_attention.py)."""
  stdout = _run_script("shared_attention.py", mesh, implementation)
  assert f"{mesh} {implementation}: shared == unsharded" in stdout


RULES = ShardingRules.from_config(tiny.get_config().sharding.rules)
MESH = {"data": 2, "fsdp": 2, "context": 2, "tensor": 2}


@pytest.mark.parametrize(
  "path,shape,spec",
  [
    ("dit.blocks.0.self_attn.q.kernel", (64, 64), P(("fsdp", "context"), "tensor")),
    ("dit.blocks.0.self_attn.o.kernel", (64, 64), P("tensor", ("fsdp", "context"))),
    ("dit.blocks.0.ffn.fc1.kernel", (64, 256), P(("fsdp", "context"), "tensor")),
    ("dit.blocks.0.modulation", (1, 6, 64), P(None, None, None)),
    # Scanned blocks carry a leading layer axis, left unsharded.
    ("dit.blocks.self_attn.q.kernel", (4, 64, 64), P(None, ("fsdp", "context"), "tensor")),
    # Optimizer moments shard like their parameter (matched by the path's end).
    ("1.opt_state.0.mu.dit.blocks.0.ffn.fc2.kernel", (256, 64), P("tensor", ("fsdp", "context"))),
    # Unmatched: FSDP on the largest dim it divides; scalars replicated.
    (
      "dit.patch_embedding.kernel",
      (1, 2, 2, 48, 64),
      P(None, None, None, None, ("fsdp", "context")),
    ),
    ("text_encoder.embed.embedding", (258, 64), P(None, ("fsdp", "context"))),
    ("1.opt_state.0.count", (), P()),
    # A dim the mesh axes do not divide stays replicated.
    ("dit.blocks.0.self_attn.q.kernel", (64, 3), P(("fsdp", "context"), None)),
  ],
)
def test_param_mesh_shardings_by_path(path, shape, spec):
  assert param_spec(path, shape, MESH, RULES) == spec


def test_every_tiny_model_parameter_gets_logical_axes_or_fsdp():
  from flax import nnx

  from moga_jax.model.text_to_video import TextToVideo

  model = nnx.eval_shape(lambda: TextToVideo(tiny.get_config().model, rngs=nnx.Rngs(0)))
  ruled = 0
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name = ".".join(map(str, path))
    ruled += bool(param_logical_axes(name, len(var.shape)))
    spec = param_spec(name, tuple(var.shape), MESH, RULES)
    if np.prod(var.shape) >= 4096:  # every big tensor is split somewhere
      assert any(s is not None for s in spec), (name, var.shape, spec)
  assert ruled > 50


def test_mesh_shape_resolution_and_errors():
  assert resolve_mesh_shape({"data": -1, "context": 4}, 8) == {
    "data": 2,
    "fsdp": 1,
    "context": 4,
    "share": 1,
    "tensor": 1,
  }
  with pytest.raises(ValueError, match="at most one may be -1"):
    resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="uses 6 devices but 8 are available"):
    resolve_mesh_shape({"data": 3, "context": 2}, 8)
  with pytest.raises(ValueError, match=r"\['pipeline'\] are not mesh axes"):
    resolve_mesh_shape({"pipeline": 2}, 8)
  with pytest.raises(ValueError, match="unknown logical axis 'activation_time'"):
    ShardingRules.from_config([("activation_time", "context")])
  with pytest.raises(ValueError, match="names mesh axis 'seq'"):
    ShardingRules.from_config([("activation_length", "seq")])


def test_a_logical_name_no_rule_knows_raises_where_the_model_uses_it():
  """Kills silent replication of a misspelt axis: a name with no rule replicates; an unknown
  name (a typo in the model) raises."""
  assert RULES.spec("activation_batch", "activation_embed", None) == P(("data", "fsdp"), None, None)
  assert ShardingRules.from_config([("activation_batch", "data")]).spec("mlp") == P(None)
  with pytest.raises(ValueError, match="unknown logical axis name 'activation_lenght'"):
    RULES.spec("activation_batch", "activation_lenght")


@pytest.mark.parametrize(
  "mesh,field,value,match",
  [
    (
      {"data": 1, "context": 8},
      None,
      None,
      r"num_heads \(4\) must be divisible by the context axes x head axes of the mesh "
      r"\(8 x 1 = 8\): Ulysses",
    ),
    ({"data": 1, "context": 2, "tensor": 4}, None, None, r"\(2 x 4 = 8\)"),
    (
      {"data": 8},
      ("train", "batch_size"),
      12,
      r"batch_size \(12\) must be divisible by the batch axes of the mesh \(8 devices\)",
    ),
    ({"data": 2, "context": 4}, ("model", "num_heads"), 8, None),  # fine
  ],
)
def test_sharding_validator_rejects_what_the_mesh_cannot_split(mesh, field, value, match):
  cfg = tiny.get_config()
  cfg.sharding.mesh = {"data": 1, "fsdp": 1, "context": 1, "tensor": 1, **mesh}
  if field:
    cfg[field[0]][field[1]] = value
  if match is None:
    assert RunConfig.from_config_dict(cfg).validate_sharding(8)["context"] == 4
  else:
    with pytest.raises(ValueError, match=match):
      RunConfig.from_config_dict(cfg).validate_sharding(8)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


SMALL = [
  "--config",
  str(ROOT / "configs" / "tiny.py"),
  "--config.data.synthetic_videos=16",
  "--config.train.batch_size=4",
  "--config.model.dim=64",
  "--config.model.ffn_dim=96",
  "--config.model.num_layers=2",
  "--config.model.text_dim=16",
  "--config.train.warmup_steps=1",
  "--config.train.checkpoint_every=2",
  "--config.sharding.mesh.data=2",
  "--config.sharding.mesh.context=4",
]


def _train(workdir: Path, steps: int, processes: int) -> None:
  """train.py on 8 CPU devices: one process with 8, or `processes` with 8 / processes each."""
  base = [
    sys.executable,
    str(ROOT / "train.py"),
    *SMALL,
    f"--config.train.steps={steps}",
    "--workdir",
    str(workdir),
  ]
  if processes == 1:
    runs = [base]
  else:
    port = _free_port()
    runs = [
      [
        *base,
        "--config.distributed.initialize=True",
        f"--config.distributed.coordinator_address=127.0.0.1:{port}",
        f"--config.distributed.num_processes={processes}",
        f"--config.distributed.process_id={i}",
      ]
      for i in range(processes)
    ]
  env = _env(8 // processes)
  procs = [
    subprocess.Popen(
      cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for cmd in runs
  ]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
    assert p.returncode == 0, f"process {i} of {processes} failed:\n{out[-4000:]}"


def _losses(workdir: Path) -> dict[int, float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows}


@pytest.mark.subprocess
@pytest.mark.slow
def test_distributed_two_processes_match_one_process(tmp_path):
  """2 processes x 4 CPU devices (coordinator on 127.0.0.1) train, checkpoint and resume, and
  log the losses 1 process x 8 devices does: each process reads its half of every global
  batch, and orbax writes and restores the checkpoint from both."""
  _train(tmp_path / "single", steps=3, processes=1)
  _train(tmp_path / "multi", steps=2, processes=2)
  assert sorted(
    p.name for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit()
  ) == ["2"]
  _train(tmp_path / "multi", steps=3, processes=2)  # resumes from step 2 in both processes
  single, multi = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
  assert sorted(multi) == [1, 2, 3]
  np.testing.assert_allclose(
    [multi[s] for s in (1, 2, 3)], [single[s] for s in (1, 2, 3)], rtol=2e-5
  )
