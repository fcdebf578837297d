"""The reproduction's code path end to end (make reproduce-smoke) and its run configs."""

from __future__ import annotations

import json

import pytest

from moga_jax.model.config import AttentionConfig
from moga_jax.reproduction.plots import comparison_table, pooled_counts, variant_comparisons
from moga_jax.reproduction.run import reproduce, run_config
from moga_jax.train.config_files import load_config_module

reproduce_config = load_config_module("reproduce")

REQUIRED = (
  "variant",
  "num_groups",
  "balance",
  "seed",
  "consistency",
  "adherence",
  "val_loss",
  "attention_flops",
  "wall_s",
)


def _run(variant, groups, balance="paper"):
  return {
    "variant": variant,
    "num_groups": groups,
    "balance": balance,
    "seed": 3,
    "experiments": ["fig11"],
  }


def test_run_configs_set_the_variants_branches():
  c = reproduce_config.get_config("full")
  dense = run_config(c, _run("dense", None, "off")).model.attention
  assert AttentionConfig.of(dense.to_dict()).dense
  moga = run_config(c, _run("moga", 4)).model.attention
  assert moga.num_groups == 4 and moga.stga_windows is None and not moga.frame_attention
  stga = run_config(c, _run("stga", None, "off"))
  assert stga.model.attention.num_groups is None and stga.model.attention.frame_attention
  assert tuple(stga.model.attention.stga_windows) == (2, 2)
  assert stga.diffusion.balance_weight == 0.0
  switch = run_config(c, _run("paper", 8, "switch"))
  assert switch.model.attention.balance_loss == "switch" and switch.seed == 3
  assert switch.diffusion.balance_weight == 0.1 and switch.model.dense_layers == ()
  with pytest.raises(ValueError, match="variant must be one of"):
    run_config(c, _run("sliding", None))
  with pytest.raises(ValueError, match="disagree"):
    run_config(c, _run("dense", 4))


def _scored(variant, seed, later, kept, experiments=("fig11",)):
  """A record whose one summary counts `later` = (matches, shots) and `kept` likewise."""
  summary = {
    "consistency": later[0] / later[1],
    "num_later_shots": later[1],
    "consistency_kept": kept[0] / kept[1],
    "num_kept_shots": kept[1],
  }
  return {
    "variant": variant,
    "seed": seed,
    "experiments": list(experiments),
    "scores": {"summaries": [summary]},
  }


def test_comparisons_pool_seeds_and_test_each_pair():
  records = [
    _scored("paper", 0, (11, 96), (8, 86)),
    _scored("paper", 1, (7, 96), (4, 86)),
    _scored("stga", 0, (5, 96), (2, 86)),
    _scored("stga", 1, (3, 96), (1, 86)),
    _scored("paper", 2, (90, 96), (80, 86), experiments=("table4",)),  # not a Fig. 11 run
  ]
  assert pooled_counts(records[:2], "consistency_kept") == (12, 172)
  rows = variant_comparisons(records)
  assert [(r["field"], r["variant"], r["against"]) for r in rows] == [
    ("consistency", "paper", "stga"),
    ("consistency_kept", "paper", "stga"),
  ]
  kept = rows[1]
  assert (kept["k"], kept["n"], kept["against_k"], kept["against_n"]) == (12, 172, 3, 172)
  assert kept["seeds"] == [0, 1] and kept["p_value"] == pytest.approx(0.0313, abs=1e-4)
  assert rows[0]["p_value"] > kept["p_value"]  # 18 vs 8 of 192 is weaker evidence
  table = comparison_table(rows)
  assert "12 / 172 = 0.070" in table and "0.031" in table
  empty = _scored("dense", 0, (1, 4), (0, 1))
  empty["scores"]["summaries"][0].update(consistency_kept=float("nan"), num_kept_shots=0)
  assert pooled_counts([empty], "consistency_kept") == (0, 0)
  rows = variant_comparisons([*records, empty])  # no kept shots: that pair is left out
  assert ("consistency_kept", "paper", "dense") not in {
    (r["field"], r["variant"], r["against"]) for r in rows
  }
  assert ("consistency", "paper", "dense") in {
    (r["field"], r["variant"], r["against"]) for r in rows
  }
  with pytest.raises(ValueError, match="field must be one of"):
    pooled_counts(records, "adherence")


@pytest.mark.slow
def test_reproduce_smoke_writes_records_and_plots(tmp_path):
  c = reproduce_config.get_config("smoke")
  c.workdir, c.results_dir = str(tmp_path / "work"), str(tmp_path / "results")
  out = reproduce(c)
  records = json.loads(out.read_text())
  assert [r["variant"] for r in records] == ["dense", "paper", "paper"]
  for r in records:
    assert all(k in r for k in REQUIRED), sorted(r)
    assert 0.0 <= r["consistency"] <= 1.0 and 0.0 <= r["adherence"] <= 1.0
    assert r["val_loss"] > 0 and r["wall_s"] > 0 and r["attention_flops"] > 0
  routed = [r for r in records if r["num_groups"]]
  for r in routed:  # router statistics: trained, untrained and random ids, and a curve
    assert {"trained", "untrained", "random", "curve"} <= set(r["router"])
    assert len(r["router"]["trained"]["layers"]) == c.base.model.num_layers
  comparisons = json.loads((tmp_path / "results" / "comparisons.json").read_text())
  assert {(c["variant"], c["against"]) for c in comparisons} == {("paper", "dense")}
  for name in ("fig11_variants.png", "fig12_balance.png"):
    assert (tmp_path / "results" / name).stat().st_size > 0
  assert (tmp_path / "work" / "samples" / "paper_m2_paper_s0.png").stat().st_size > 0
  # A second call finds every record and trains nothing.
  before = {p.name: p.stat().st_mtime for p in (tmp_path / "work" / "records").iterdir()}
  reproduce(c)
  after = {p.name: p.stat().st_mtime for p in (tmp_path / "work" / "records").iterdir()}
  assert before == after
  # collect_only gathers the records there are and trains nothing.
  (tmp_path / "work" / "records" / "dense_off_s0.json").unlink()
  c.collect_only = True
  records = json.loads(reproduce(c).read_text())
  assert [r["name"] for r in records] == ["paper_m2_paper_s0", "paper_m2_off_s0"]
  assert not (tmp_path / "work" / "records" / "dense_off_s0.json").exists()
