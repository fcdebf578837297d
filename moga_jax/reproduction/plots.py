"""Pictures and the summary table of the reproduction (`moga_jax.reproduction.run`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from moga_jax.reproduction.eval.stats import fisher_exact, wilson_interval

_LABELS = {
  "dense": "full attention",
  "moga": "MoGA only",
  "stga": "STGA + frame only",
  "paper": "paper's block",
}


def _by(records, experiment: str, key) -> dict:
  groups = defaultdict(list)
  for r in records:
    if experiment in r["experiments"]:
      groups[key(r)].append(r)
  return groups


def _mean_spread(rows, field: str) -> tuple[float, float]:
  values = np.array([r[field] for r in rows], float)
  return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0


def _fmt(rows, field: str, digits: int = 3) -> str:
  mean, spread = _mean_spread(rows, field)
  return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def summary_table(records) -> str:
  """Markdown: one row per (variant, M, balance), mean and spread over seeds."""
  groups = defaultdict(list)
  for r in records:
    groups[(r["variant"], r["num_groups"], r["balance"])].append(r)
  lines = [
    "| variant | M | balance | seeds | consistency | adherence | val loss | attention "
    "GFLOP | step s | balance metric | subject IoU (trained / untrained / random) |",
    "|---|---:|---|---:|---|---|---|---:|---:|---:|---|",
  ]
  for (variant, m, balance), rows in groups.items():
    router = [r["router"] for r in rows if "router" in r]
    balance_metric = iou = "-"
    if router:
      balance_metric = f"{np.mean([x['trained']['balance_metric'] for x in router]):.2f}"
      iou = " / ".join(
        f"{np.mean([x[k]['subject_iou'] for x in router]):.2f}"
        for k in ("trained", "untrained", "random")
      )
    lines.append(
      f"| {variant} | {m or '-'} | {balance} | {len(rows)} | "
      f"{_fmt(rows, 'consistency')} | {_fmt(rows, 'adherence')} | "
      f"{_fmt(rows, 'val_loss', 4)} | "
      f"{rows[0]['attention_flops'] / 1e9:.2f} | "
      f"{np.mean([r['step_s'] for r in rows]):.2f} | {balance_metric} | {iou} |"
    )
  return "\n".join(lines)


# Rates the comparisons pool, and the count each is a share of (per summary of held-out samples).
_COUNTED = {"consistency": "num_later_shots", "consistency_kept": "num_kept_shots"}

# (variant, against): every variant against the control that cannot see across a cut, and the
# paper's block against full attention.
_PAIRS = (("paper", "stga"), ("moga", "stga"), ("dense", "stga"), ("paper", "dense"))


def pooled_counts(rows, field: str) -> tuple[int, int]:
  """(successes, shots) of `field` summed over the runs' seeds and sample seeds."""
  if field not in _COUNTED:
    raise ValueError(f"field must be one of {sorted(_COUNTED)}, got {field!r}")
  k = n = 0
  for r in rows:
    for summary in r["scores"]["summaries"]:
      count = int(summary[_COUNTED[field]])
      if count:  # with nothing to count the rate is nan
        k, n = k + round(summary[field] * count), n + count
  return k, n


def variant_comparisons(records, fields=tuple(_COUNTED)) -> list[dict]:
  """The Fig. 11 variants pooled over seeds, each pair of `_PAIRS` tested by Fisher's exact test.

  Pooling treats shots as independent. They are not quite: a clip's two later shots come from
  one sample, so the p-values are somewhat optimistic; read them as a guide, not a verdict.
  """
  fig11 = _by(records, "fig11", lambda r: r["variant"])
  out = []
  for field in fields:
    for variant, against in _PAIRS:
      if variant not in fig11 or against not in fig11:
        continue
      (k_a, n_a), (k_b, n_b) = (
        pooled_counts(fig11[variant], field),
        pooled_counts(fig11[against], field),
      )
      if not (n_a and n_b):
        continue
      out.append(
        {
          "field": field,
          "variant": variant,
          "against": against,
          "seeds": sorted(r["seed"] for r in fig11[variant]),
          "against_seeds": sorted(r["seed"] for r in fig11[against]),
          "k": k_a,
          "n": n_a,
          "rate": k_a / n_a,
          "interval": wilson_interval(k_a, n_a),
          "against_k": k_b,
          "against_n": n_b,
          "against_rate": k_b / n_b,
          "against_interval": wilson_interval(k_b, n_b),
          "p_value": fisher_exact(k_a, n_a, k_b, n_b),
        }
      )
  return out


def _p(value: float) -> str:
  return "< 0.001" if value < 0.001 else f"{value:.3f}"


def comparison_table(comparisons) -> str:
  """Markdown: one row per compared pair and field (rates with Wilson 95% intervals)."""
  lines = [
    "| shots counted | variant | against | variant: matches / shots (95% interval) "
    "| against: matches / shots (95% interval) | Fisher p (two-sided) |",
    "|---|---|---|---|---|---:|",
  ]
  what = {"consistency": "all later shots", "consistency_kept": "later shots, same subject"}
  for c in comparisons:
    a_lo, a_hi = c["interval"]
    b_lo, b_hi = c["against_interval"]
    lines.append(
      f"| {what[c['field']]} | {_LABELS[c['variant']]} | {_LABELS[c['against']]} | "
      f"{c['k']} / {c['n']} = {c['rate']:.3f} ({a_lo:.3f}-{a_hi:.3f}) | "
      f"{c['against_k']} / {c['against_n']} = {c['against_rate']:.3f} ({b_lo:.3f}-{b_hi:.3f}) | "
      f"{_p(c['p_value'])} |"
    )
  return "\n".join(lines)


def plot_all(records, out_dir: Path, experiments=("fig11", "table4", "fig12")) -> list[Path]:
  """The plots of the experiments asked for (a run tagged with several counts in each)."""
  records = [
    dict(r, experiments=[e for e in r["experiments"] if e in experiments]) for r in records
  ]
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out_dir = Path(out_dir)
  paths = []

  # Fig. 11 analogue: the four variants, mean and seeds.
  fig11 = _by(records, "fig11", lambda r: r["variant"])
  if fig11:
    names = [v for v in _LABELS if v in fig11]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, field, title in zip(
      axes,
      ("consistency", "adherence", "val_loss"),
      ("cross-shot consistency", "caption adherence", "validation loss"),
      strict=True,
    ):
      for i, name in enumerate(names):
        values = [r[field] for r in fig11[name]]
        ax.bar(i, np.mean(values), color="lightsteelblue", edgecolor="k")
        ax.scatter([i] * len(values), values, color="k", s=12, zorder=3)
      ax.set_xticks(range(len(names)), [_LABELS[n] for n in names], rotation=20, fontsize=8)
      ax.set_title(title)
    axes[0].axhline(1 / 15, color="grey", ls="--", lw=0.8, label="chance")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "fig11_variants.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

  # Table 4 analogue: consistency and attention FLOPs against M.
  table4 = _by(records, "table4", lambda r: r["num_groups"])
  if table4:
    ms = sorted(table4)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    mean = [np.mean([r["consistency"] for r in table4[m]]) for m in ms]
    ax.plot(ms, mean, "o-", label="consistency")
    for m in ms:
      ax.scatter([m] * len(table4[m]), [r["consistency"] for r in table4[m]], color="k", s=10)
    ax.set(
      xscale="log",
      xlabel="groups M",
      ylabel="cross-shot consistency",
      title="the paper's block against M",
    )
    ax.set_xticks(ms, [str(m) for m in ms])
    twin = ax.twinx()
    twin.plot(
      ms,
      [table4[m][0]["attention_flops"] / 1e9 for m in ms],
      "s--",
      color="tab:red",
      label="attention GFLOP",
    )
    twin.set_ylabel("self-attention GFLOP / sample", color="tab:red")
    fig.tight_layout()
    paths.append(out_dir / "table4_groups.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

  # Fig. 12 analogue: the balance metric over training, per balancing loss.
  fig12 = [r for r in records if "fig12" in r["experiments"] and "router" in r]
  if fig12:
    fig, (ax, ax_sizes) = plt.subplots(1, 2, figsize=(11, 3.6))
    for r in fig12:
      curve = r["router"]["curve"]
      ax.plot(
        [p["step"] for p in curve],
        [p["balance_metric"] for p in curve],
        label=f"{r['balance']} (seed {r['seed']})",
      )
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set(
      xlabel="step", ylabel="M x sum F_i^2 (1 = balanced)", title="group balance over training"
    )
    ax.legend(fontsize=8)
    width = 0.8 / len(fig12)
    for i, r in enumerate(fig12):
      # Sorted within each layer first: layers that each fill different groups would
      # otherwise average into a balanced-looking bar.
      layers = [lay["group_fractions"] for lay in r["router"]["trained"]["layers"]]
      fractions = np.mean([np.sort(f)[::-1] for f in layers], axis=0)
      ax_sizes.bar(
        np.arange(len(fractions)) + i * width,
        fractions,
        width,
        label=f"{r['balance']} (seed {r['seed']})",
      )
    groups = max(len(r["router"]["trained"]["layers"][0]["group_fractions"]) for r in fig12)
    ax_sizes.set_xticks(
      np.arange(groups) + width * (len(fig12) - 1) / 2, [str(g + 1) for g in range(groups)]
    )
    ax_sizes.set(
      xlabel="group (largest first)",
      ylabel="fraction of tokens",
      title="group sizes after training (each layer's largest first, mean)",
    )
    ax_sizes.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "fig12_balance.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
  return paths
