"""Fixtures and hooks shared by the tests; the helpers they import live in helpers.py."""

from __future__ import annotations

import os
import zlib

# With libtpu installed (the tpu-compile extra) every process that starts JAX loads it; let the
# xdist workers share it instead of failing on its lockfile.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import pytest
from helpers import is_hardware_refusal

from pallas_kernels import resolve_implementation


@pytest.fixture(autouse=True)
def _skip_kernels_this_backend_cannot_run(request):
  """On CPU every kernel runs interpreted; on a GPU (TPU) machine the TPU (GPU) one is skipped."""
  impl = getattr(getattr(request.node, "callspec", None), "params", {}).get("impl")
  if impl is not None:
    try:
      resolve_implementation(impl)
    except ValueError as e:
      pytest.skip(str(e))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """On a GPU or TPU machine a kernel test whose shape the compiled kernel refuses is skipped
  with the refusal as the reason, not failed; on CPU (interpret mode) it still fails."""
  outcome = yield
  report = outcome.get_result()
  if (
    call.when == "call"
    and call.excinfo is not None
    and jax.default_backend() != "cpu"
    and is_hardware_refusal(call.excinfo.value)
  ):
    report.outcome = "skipped"
    report.longrepr = (
      str(item.path),
      item.location[1] or 0,
      f"Skipped: {jax.default_backend()}: {call.excinfo.value}",
    )


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin has set up the session's basetemp
def pytest_configure(config):
  """A JAX compilation cache shared by the session (and its xdist workers): the train.py /
  sample.py subprocesses and the in-process training runs (tests/test_train_sample.py) compile
  the same programs over and over; the cache cuts a tiny run from ~25 s to ~10 s. Set here,
  before collection imports any test module: the first compile in a process decides whether
  that process uses the cache. A test that sets its own env for a subprocess copies this one."""
  factory = getattr(config, "_tmp_path_factory", None)
  if factory is None:
    return
  base = factory.getbasetemp()
  # Under xdist each worker's base folder sits in the session's: share that one.
  shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
  shared.mkdir(exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(shared))
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


@pytest.fixture
def key(request) -> jax.Array:
  """A key from the test's own id (name and parameters): no two tests share inputs, and a
  failure reproduces under -k, in any order and on any xdist worker."""
  return jax.random.key(zlib.crc32(request.node.nodeid.encode()))


# The fast tier (`make test-fast`: -m "not slow and not subprocess and not compile") leaves out
# these tests as well: measured over ~5 s each (`pytest -n 2 -v -o console_output_style=times`,
# 2026-12-08, on a 2-core machine shared with other jobs, so about 3x a quiet machine's time).
# They are marked slow here rather than in their parametrize lists; `make test` runs them.
MEASURED_SLOW = frozenset(
  {
    "tests/test_configs.py::test_make_optimizer_applies_the_constant_schedule",
    "tests/test_consistency_data.py::test_real_clips_score_near_one",
    "tests/test_diffusion.py::test_caption_dropout_drops_at_its_rate",
    "tests/test_diffusion.py::test_loss_is_zero_for_the_true_velocity_and_not_for_its_negative",
    "tests/test_group_attention.py::test_matches_reference_chosen_group_sizes[sizes4-pallas_gpu]",
    "tests/test_group_attention.py::test_matches_reference_chosen_group_sizes[sizes4-pallas_tpu]",
    "tests/test_group_attention.py::test_matches_reference_random_groups[1-150-4-8-3-32-True-pallas_gpu]",
    "tests/test_group_attention.py::test_matches_reference_random_groups[1-150-4-8-3-32-True-xla]",
    "tests/test_group_attention.py::test_matches_reference_random_groups[2-203-3-16-5-16-False-pallas_tpu]",
    "tests/test_group_attention.py::test_one_group_equals_full_attention[pallas_tpu]",
    "tests/test_group_attention.py::test_short_sequence_default_tile[pallas_gpu]",
    "tests/test_group_attention.py::test_short_sequence_default_tile[pallas_tpu]",
    "tests/test_kernel_options.py::test_the_module_and_the_config_carry_the_options",
    "tests/test_kernel_options.py::test_visits_per_row_is_checked_and_changes_no_result",
    "tests/test_library.py::test_a_latent_grid_goes_in_and_comes_out",
    "tests/test_library.py::test_check_ids_checks_traced_group_ids_under_checkify",
    "tests/test_library.py::test_check_ids_checks_traced_shot_ids_under_checkify",
    "tests/test_library.py::test_errors_come_before_tracing",
    "tests/test_library.py::test_float64_is_computed_in_float32_when_the_module_says_so",
    # one setting measured 3m46s; every parametrisation goes (no [...]: all of them)
    "tests/test_memory_settings.py::test_memory_settings_change_nothing_computed",
    "tests/test_metadata.py::test_capacity_is_enough_in_the_worst_case",
    "tests/test_metadata.py::test_layout_invariants_random[1-37-1-16]",
    "tests/test_metadata.py::test_layout_invariants_random[2-10-30-4]",
    "tests/test_metadata.py::test_layout_invariants_random[2-64-8-64]",
    "tests/test_metadata.py::test_layout_invariants_random[3-50-4-8]",
    "tests/test_metadata.py::test_layout_invariants_skewed_and_empty_groups",
    "tests/test_metadata.py::test_pack_unpack_round_trip_and_gradients",
    "tests/test_model.py::test_paper_block_in_closed_form",
  }
)


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.nodeid in MEASURED_SLOW or item.nodeid.split("[", 1)[0] in MEASURED_SLOW:
      item.add_marker(pytest.mark.slow)
