"""Evaluation metrics (numpy only): cross-shot subject consistency on the consistency set, and
the small-sample statistics the reproduction compares them with."""

from moga_jax.reproduction.eval.consistency import (
  chance_levels,
  classify_background,
  classify_subject,
  group_mask_iou,
  group_mask_iou_baseline,
  group_mask_ious,
  group_sizes,
  score_clip,
  score_videos,
  token_mask,
)
from moga_jax.reproduction.eval.stats import fisher_exact, wilson_interval

__all__ = [
  "chance_levels",
  "classify_background",
  "classify_subject",
  "fisher_exact",
  "group_mask_iou",
  "group_mask_iou_baseline",
  "group_mask_ious",
  "group_sizes",
  "score_clip",
  "score_videos",
  "token_mask",
  "wilson_interval",
]
