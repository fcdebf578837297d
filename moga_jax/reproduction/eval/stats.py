"""Small-sample statistics for rates counted in shots (numpy and the standard library only).

The reproduction compares rates like 12 of 172 against 3 of 172: normal approximations are poor
there, so the interval is Wilson's and the test is Fisher's exact test.
"""

from __future__ import annotations

import math


def _check_counts(k: int, n: int, name: str) -> None:
  if not (isinstance(k, int) and isinstance(n, int)) or isinstance(k, bool) or isinstance(n, bool):
    raise TypeError(f"{name}: counts must be ints, got {k!r} of {n!r}")
  if not 0 <= k <= n or n == 0:
    raise ValueError(f"{name}: need 0 <= successes <= trials and trials > 0, got {k} of {n}")


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
  """Wilson score interval of the rate k / n (z = 1.96: 95%)."""
  _check_counts(k, n, "wilson_interval")
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, centre - half), min(1.0, centre + half)


def fisher_exact(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
  """Two-sided p-value of Fisher's exact test: do k_a / n_a and k_b / n_b share one rate?

  The 2 x 2 table's margins are fixed; p sums the hypergeometric probabilities of every table
  no more likely than the one observed (the usual two-sided rule, as in R and SciPy).
  """
  _check_counts(k_a, n_a, "fisher_exact (a)")
  _check_counts(k_b, n_b, "fisher_exact (b)")
  total_k, total = k_a + k_b, n_a + n_b

  def log_prob(x: int) -> float:  # P(a has x successes | margins)
    return (
      math.lgamma(n_a + 1)
      - math.lgamma(x + 1)
      - math.lgamma(n_a - x + 1)
      + math.lgamma(n_b + 1)
      - math.lgamma(total_k - x + 1)
      - math.lgamma(n_b - total_k + x + 1)
      - (math.lgamma(total + 1) - math.lgamma(total_k + 1) - math.lgamma(total - total_k + 1))
    )

  support = range(max(0, total_k - n_b), min(n_a, total_k) + 1)
  observed = log_prob(k_a)
  # A relative tolerance, as SciPy uses, so that tables tied with the observed one count.
  p = sum(math.exp(lp) for x in support if (lp := log_prob(x)) <= observed + 1e-7)
  return min(1.0, p)
