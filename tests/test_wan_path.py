"""The Wan 2.1 path on tiny random components, without torch: convert -> converted folder ->
load, sampling, train.py on latents from the converted VAE and umT5, sample.py --weights and the
export round trip, as a user runs them.

The diffusers-layout source folder is written by tests/wan_fixtures.py (numpy + safetensors);
the comparisons against diffusers and transformers themselves are the parity tests
(tests/test_wan_pipeline.py, test_parity_*.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")  # the `wan` extra
pytest.importorskip("tokenizers")

import jax
import jax.numpy as jnp
import wan_fixtures
from flax import nnx
from PIL import Image
from wan_fixtures import TINY, flags, rel_err, tiny_config

from moga_jax.data import video_io
from moga_jax.data.pipeline import make_loader
from moga_jax.model.text_to_video import dit_from_config
from moga_jax.train.checkpoint import Checkpointer
from moga_jax.train.config_files import load_config_module
from moga_jax.train.state import make_optimizer
from moga_jax.wan import converted_folder as converted
from moga_jax.wan import pipeline
from moga_jax.wan.convert import convert
from moga_jax.wan.dit_weights import load_wan_dit

# One worker builds the module fixtures once (--dist loadgroup); `make test-parity` runs these
# too (marker `wan`), on the oldest jax we support.
pytestmark = [pytest.mark.wan, pytest.mark.xdist_group("wan_path")]

ROOT = Path(__file__).parents[1]
D, U = wan_fixtures.DIT, wan_fixtures.UMT5


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
  """A diffusers-layout folder of tiny random Wan 2.1 components (no MoGA routers)."""
  return wan_fixtures.save_pipeline(tmp_path_factory.mktemp("wan") / "diffusers")


@pytest.fixture(scope="module")
def weights(source, tmp_path_factory) -> tuple[Path, list[str]]:
  out = tmp_path_factory.mktemp("converted")
  return out, convert(source, out, tiny_config())


def _assert_same_params(a, b) -> None:
  for (path, x), (_, y) in zip(
    nnx.to_flat_state(nnx.state(a, nnx.Param)),
    nnx.to_flat_state(nnx.state(b, nnx.Param)),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(x[...]), np.asarray(y[...]), err_msg=str(path))


def test_conversion_reports_every_component_and_the_new_routers(weights):
  out, reports = weights
  assert [r.split()[0] for r in reports] == ["transformer", "vae", "text_encoder", "tokenizer"]
  transformer = reports[0]
  assert "missing" not in transformer and "unexpected" not in transformer
  assert "initialised as the config says" in transformer
  routers = [ln.strip() for ln in transformer.splitlines() if "router" in ln]
  assert len(routers) == D["num_layers"], transformer
  meta = converted.read_meta(out / "transformer")
  assert meta["report"]["initialised"] == routers
  assert sorted(p.name for p in (out / "tokenizer").iterdir()) == [
    "tokenizer.json",
    "tokenizer_config.json",
  ]


def test_every_source_tensor_is_loaded(source, weights):
  """The fixture's tensors are exactly what the loaders read: each component's report counts
  every tensor of its file (a missing or unexpected one would have raised)."""
  from moga_jax.wan.weights import read_safetensors

  _, reports = weights
  for component, report in zip(("transformer", "vae", "text_encoder"), reports, strict=False):
    count = len(read_safetensors(source / component))
    assert f"{count} tensors loaded" in report, (component, report)


def test_converted_dit_equals_direct_load(source, weights):
  out, _ = weights
  cfg = tiny_config()
  dit = converted.load_dit(out, cfg.model, seed=cfg.seed)
  direct = dit_from_config(cfg.model, rngs=nnx.Rngs(cfg.seed))
  load_wan_dit(source / "transformer", direct)
  _assert_same_params(dit, direct)
  # One MoGA group: the routers now have 1 output, not the converted 2.
  one_group = tiny_config(
    **{
      "model.attention.num_groups": 1,
      "model.attention.stga_windows": None,
      "model.attention.frame_attention": False,
    }
  )
  with pytest.raises(ValueError, match="router"):
    converted.load_dit(out, one_group.model)


@pytest.mark.slow
def test_sampling_is_deterministic_and_uses_the_prompts(weights):
  out, _ = weights
  cfg = tiny_config(**{"sample.steps": 2})
  a, shots = pipeline.generate(out, cfg, ["a cat", "a dog"], seed=1)
  b, _ = pipeline.generate(out, cfg, ["a cat", "a dog"], seed=1)
  c, _ = pipeline.generate(out, cfg, ["waves at night", "a dog"], seed=1)
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c.astype(int)).max() > 0
  np.testing.assert_array_equal(shots, [0, 0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.slow
def test_conversion_takes_the_widths_from_the_checkpoint(source, tmp_path):
  """The un-shrunk 1.3B config converts the tiny transformer: widths from its config.json, MoGA
  settings from the config; loading builds from the recorded widths."""
  cfg = load_config_module("wan1_3b_moga").get_config()
  out = tmp_path / "any_size"
  convert(source, out, cfg, ["transformer"])
  recorded = converted.read_meta(out / "transformer")["model_config"]
  sized = converted.with_converted_widths(cfg, out)
  want = {
    "dim": D["num_attention_heads"] * D["attention_head_dim"],
    "ffn_dim": D["ffn_dim"],
    "num_layers": D["num_layers"],
    "num_heads": D["num_attention_heads"],
    "text_dim": U["d_model"],
    "freq_dim": D["freq_dim"],
  }
  for key, value in want.items():
    assert recorded[key] == value and sized.model[key] == value, key
  # MoGA's settings: the config's.
  assert recorded["attention"] == json.loads(json.dumps(cfg.model.attention.to_dict()))
  assert cfg.model.dim == 1536  # the caller's config is left alone
  dit = converted.load_dit(out, sized.model)
  # The config scans its blocks: their weights are stacked, one row per layer.
  assert sized.model.scan_layers
  assert dit.blocks.self_attn.q.kernel.shape == (want["num_layers"], want["dim"], want["dim"])


def test_dense_wan_config_converts_with_nothing_initialised(source, tmp_path):
  """configs/wan1_3b.py (no MoGA): every parameter comes from the file."""
  wan1_3b = load_config_module("wan1_3b")
  out = tmp_path / "dense"
  reports = convert(source, out, wan1_3b.get_config(), ["transformer"])
  assert "initialised" not in reports[0] and "router" not in reports[0], reports[0]
  cfg = converted.with_converted_widths(wan1_3b.get_config(), out)
  direct = dit_from_config(cfg.model, rngs=nnx.Rngs(0))
  load_wan_dit(source / "transformer", direct)
  _assert_same_params(converted.load_dit(out, cfg.model), direct)


def test_bad_sources_and_mismatches_fail_with_names(source, weights, tmp_path):
  out, _ = weights
  pickled = tmp_path / "pickled"
  pickled.mkdir()
  shutil.copyfile(source / "transformer" / "config.json", pickled / "config.json")
  (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
  with pytest.raises(ValueError, match="pickle-based checkpoint"):
    convert(pickled, tmp_path / "y", tiny_config())
  with pytest.raises(ValueError, match="num_groups: checkpoint 2 vs config 4"):
    converted.load_dit(out, tiny_config(**{"model.attention.num_groups": 4}).model)
  interrupted = tmp_path / "interrupted"
  shutil.copytree(out / "vae", interrupted / "vae")
  (interrupted / "vae" / converted.META).unlink()
  with pytest.raises(FileNotFoundError, match="interrupted conversion"):
    converted.load_vae(interrupted)
  with pytest.raises(FileNotFoundError, match="has no text_encoder/"):
    converted.load_text_encoder(interrupted)
  with pytest.raises(ValueError, match="4 prompts for 3 latent frames"):
    pipeline.generate(out, tiny_config(), ["a", "b", "c", "d"], seed=0)
  with pytest.raises(ValueError, match="1 \\+ 4k frames"):
    pipeline.generate(out, tiny_config(**{"video.frames": 10}), ["a"], seed=0)


def test_text_encoder_casts_to_bfloat16_on_load(weights):
  out, _ = weights
  f32 = converted.load_text_encoder(out)
  bf16 = converted.load_text_encoder(out, param_dtype=jnp.bfloat16)
  leaves = jax.tree.leaves(nnx.state(bf16, nnx.Param))
  assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
  ids = jnp.asarray(np.random.default_rng(0).integers(3, U["vocab_size"], (2, 12)), jnp.int32)
  mask = jnp.ones((2, 12), bool)
  assert rel_err(bf16(ids, mask), f32(ids, mask)) < 3e-2
  assert json.loads((out / "text_encoder" / converted.META).read_text())["dtype"] == "float32"


# --- as a user runs them: train.py / sample.py / moga_jax.wan.export subprocesses -------------


def _run(*args: str) -> subprocess.CompletedProcess:
  result = subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _config(values: dict) -> list[str]:
  return ["--config", str(ROOT / "configs/wan1_3b_moga.py"), *flags(values)]


@pytest.mark.slow
@pytest.mark.subprocess
def test_sample_py_writes_a_multi_shot_video_and_contact_sheet(weights, tmp_path):
  out, _ = weights
  output = tmp_path / "clip.mp4"
  prompts = ["--prompt", "A cat walks across a sunny garden.", "--prompt", "Waves crash at sunset."]
  result = _run(
    str(ROOT / "sample.py"),
    *_config(TINY),
    "--weights",
    str(out),
    "--output",
    str(output),
    *prompts,
  )
  assert "2 shots" in result.stdout
  video = video_io.read_video(output)
  assert video.shape == (TINY["video.frames"], TINY["video.height"], TINY["video.width"], 3)
  assert video.std() > 1.0  # decoded from random latents: not a flat frame
  sheet = Image.open(output.with_suffix(".png"))
  # 3 latent frames over 2 shots are (2, 1) latents: 5 and 4 frames, so 2 rows of 4 columns.
  width, height = sheet.size
  assert width * TINY["video.height"] * 2 == height * TINY["video.width"] * 4


def _run_dit(workdir: Path, cfg):
  """The DiT of a run's latest checkpoint, read with the Checkpointer directly (not through
  the code sample.py uses)."""
  dit = dit_from_config(cfg.model, rngs=nnx.Rngs(7))
  state = nnx.state((dit, make_optimizer(dit, cfg.train)))
  checkpoints = Checkpointer(workdir / "checkpoints")
  restored, _ = checkpoints.restore_state(state, model_config=cfg.model.to_dict())
  checkpoints.close()
  nnx.update(dit, restored[0])
  return dit


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_py_fine_tunes_from_converted_weights(weights, tmp_path):
  """Two-shot synthetic clips -> latents through the converted VAE and umT5 -> 2 steps from the
  converted DiT. With learning rate 0 the checkpoint must hold the converted weights exactly."""
  out, _ = weights
  workdir = tmp_path / "runs" / "wan"
  run = dict(
    TINY,
    **{
      "video.shots": 2,
      "data.synthetic_videos": 4,
      "train.batch_size": 2,
      "train.steps": 2,
      "train.warmup_steps": 1,
      "train.learning_rate": 0.0,
    },
  )
  _run(str(ROOT / "train.py"), *_config(run), "--init", str(out), "--workdir", str(workdir))
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  losses = [json.loads(line)["loss"] for line in lines]
  assert len(losses) == 2 and all(np.isfinite(losses))

  latents = next((tmp_path / "runs" / "data").glob("prepared/*/latents/*/*/*/1.0.0"))
  loader = make_loader(latents, batch_size=4, seed=0, num_epochs=1)
  batch = next(loader)
  assert batch["latents"].shape == (4, 3, 4, 6, 4) and np.abs(batch["latents"]).max() > 0
  assert batch["context"].shape == (4, 2, TINY["video.caption_len"], U["d_model"])
  np.testing.assert_array_equal(batch["frame_shot"], [[0, 0, 1]] * 4)  # shots of 5 + 4 frames
  assert np.abs(batch["null_context"]).max() > 0
  _latents_equal_encoding_of_their_clips(latents, out)

  cfg = tiny_config(**{"video.shots": 2, "train.learning_rate": 0.0})
  _assert_same_params(_run_dit(workdir, cfg), converted.load_dit(out, cfg.model))


def _latents_equal_encoding_of_their_clips(latents: Path, weights: Path) -> None:
  """Each stored example is the converted VAE's normalised encoding of its own clip (pixels in
  [-1, 1]) and umT5's states of its own captions, up to float16 storage. Kills: latents of
  another clip, un-normalised latents, pixels in [0, 255] or [0, 1], captions of another clip."""
  import tensorflow_datasets as tfds

  from moga_jax.data import decode_captions
  from moga_jax.wan.latent_data import SUMMARY
  from moga_jax.wan.tokenizer import encode_prompts
  from moga_jax.wan.umt5 import prompt_embeddings

  videos_dir = json.loads((latents / SUMMARY).read_text())["video_dir"]
  records = tfds.builder_from_directory(videos_dir).as_data_source(split="train")
  clips = {np.bytes_(r["name"]).decode(): r for r in map(records.__getitem__, range(4))}
  vae, encoder = converted.load_vae(weights), converted.load_text_encoder(weights)
  tokenizer = converted.load_converted_tokenizer(weights)
  batch = next(make_loader(latents, batch_size=4, seed=0, num_epochs=1, include_name=True))
  for i, name in enumerate(batch["name"]):
    clip = clips[name.decode()]
    video = jnp.asarray(clip["video"], jnp.float32)[None] / 127.5 - 1.0
    want = np.asarray(vae.encode_normalized(video)[0])
    assert rel_err(batch["latents"][i], want) < 2e-3, name  # float16: 2**-11 relative
    shots = int(clip["num_shots"])
    ids, mask = encode_prompts(
      tokenizer, decode_captions(clip["captions"], shots), max_len=TINY["video.caption_len"]
    )
    states = np.asarray(prompt_embeddings(encoder, jnp.asarray(ids), jnp.asarray(mask)))
    assert rel_err(batch["context"][i, :shots], states) < 2e-3, name


@pytest.mark.slow
@pytest.mark.subprocess
def test_sample_py_samples_a_finetuned_run_and_export_round_trips(weights, tmp_path):
  """convert -> `train.py --init` (2 steps that change the weights) -> `sample.py --workdir RUN
  --weights CONVERTED`: the video comes from the run's DiT (routers included), not the converted
  one, with umT5 and the VAE of the converted folder. Then the run exported to diffusers'
  layout converts back to its own weights."""
  out, _ = weights
  workdir = tmp_path / "runs" / "finetuned"
  run = dict(
    TINY,
    **{
      "video.shots": 2,
      "data.synthetic_videos": 2,
      "train.batch_size": 2,
      "train.steps": 2,
      "train.warmup_steps": 1,
      "train.learning_rate": 0.05,
    },
  )
  config = _config(run)
  _run(str(ROOT / "train.py"), *config, "--init", str(out), "--workdir", str(workdir))
  prompts = ["a red kite", "a blue boat"]
  videos = {}
  for name, extra in (("finetuned", ["--workdir", str(workdir)]), ("converted", [])):
    output = tmp_path / f"{name}.mp4"
    _run(
      str(ROOT / "sample.py"),
      *config,
      "--weights",
      str(out),
      *extra,
      *(a for p in prompts for a in ("--prompt", p)),
      "--output",
      str(output),
    )
    videos[name] = video_io.read_video(output).astype(np.float32)

  cfg = tiny_config(**{"video.shots": 2, "train.learning_rate": 0.05})
  dit = _run_dit(workdir, cfg)
  want, _ = pipeline.generate(out, cfg, prompts, seed=cfg.sample.seed, dit=dit)
  # Through the same (lossy, deterministic) H.264 encoder the run's video comes back as
  # sample.py wrote it; the converted DiT's video is far from it.
  video_io.write_mp4(tmp_path / "want.mp4", want, fps=cfg.video.fps)
  want = video_io.read_video(tmp_path / "want.mp4").astype(np.float32)
  assert np.abs(videos["finetuned"] - want).mean() < 0.5
  assert np.abs(videos["finetuned"] - videos["converted"]).mean() > 5.0

  # Export round trip: run -> diffusers-layout safetensors -> convert_wan -> the run's weights,
  # routers included (loaded this time, not initialised).
  exported = tmp_path / "exported"
  _run(
    *("-m", "moga_jax.wan.export", *config),
    *("--workdir", str(workdir), "--weights", str(out), "--out", str(exported)),
  )
  back = tmp_path / "back"
  report = convert(exported, back, cfg, ["transformer"])[0]
  assert "initialised" not in report and "unexpected" not in report, report
  _assert_same_params(converted.load_dit(back, cfg.model), dit)
