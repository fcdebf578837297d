"""Wilson intervals and Fisher's exact test (moga_jax.reproduction.eval.stats), checked against
published values and an exact enumeration in rationals."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from moga_jax.reproduction.eval.stats import fisher_exact, wilson_interval


def _fisher_by_enumeration(k_a, n_a, k_b, n_b) -> float:
  total_k, total = k_a + k_b, n_a + n_b
  probs = {
    x: Fraction(math.comb(n_a, x) * math.comb(n_b, total_k - x), math.comb(total, total_k))
    for x in range(max(0, total_k - n_b), min(n_a, total_k) + 1)
  }
  assert sum(probs.values()) == 1
  return float(sum(p for p in probs.values() if p <= probs[k_a]))


@pytest.mark.parametrize(
  "table, want",
  [
    ((3, 4, 1, 4), 0.4857142857),  # Fisher's tea-tasting table, two-sided
    ((6, 8, 1, 5), 0.1025641026),
    ((1, 10, 11, 14), 0.0027594562),
  ],
)
def test_fisher_matches_published_values(table, want):
  assert fisher_exact(*table) == pytest.approx(want, rel=1e-8)


def test_fisher_matches_enumeration_and_is_symmetric():
  rng = np.random.default_rng(7)
  for _ in range(40):
    n_a, n_b = (int(x) for x in rng.integers(1, 60, size=2))
    k_a, k_b = int(rng.integers(0, n_a + 1)), int(rng.integers(0, n_b + 1))
    p = fisher_exact(k_a, n_a, k_b, n_b)
    assert p == pytest.approx(_fisher_by_enumeration(k_a, n_a, k_b, n_b), rel=1e-9)
    assert p == pytest.approx(fisher_exact(k_b, n_b, k_a, n_a), rel=1e-9)
  assert fisher_exact(5, 50, 5, 50) == pytest.approx(1.0)
  assert fisher_exact(0, 100, 30, 100) < 1e-9


def test_wilson_interval_values_and_coverage():
  assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775328), abs=1e-7)
  lo, hi = wilson_interval(12, 172)
  assert lo < 12 / 172 < hi and (lo, hi) == pytest.approx((0.040357, 0.117976), abs=1e-6)
  assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
  # ~95% coverage of a known rate over many draws.
  rng = np.random.default_rng(0)
  rate, n = 0.08, 96
  hits = [
    lo <= rate <= hi for lo, hi in (wilson_interval(int(k), n) for k in rng.binomial(n, rate, 4000))
  ]
  assert 0.93 < np.mean(hits) < 0.98


@pytest.mark.parametrize(
  "args, error, needle",
  [
    ((3, 2), ValueError, "3 of 2"),
    ((0, 0), ValueError, "trials > 0"),
    ((1.0, 4), TypeError, "must be ints"),
  ],
)
def test_bad_counts_raise(args, error, needle):
  with pytest.raises(error, match=needle):
    wilson_interval(*args)
  with pytest.raises(error, match=needle):
    fisher_exact(*args, 1, 4)
