"""moga-jax: Mixture-of-Groups Attention for long-video diffusion transformers in JAX/Flax."""

from moga_jax.attention import MoGAAttention
from moga_jax.dit import VideoDiT
from moga_jax.model_config import DENSE, AttentionConfig, DiTConfig
from moga_jax.routing import GroupRouter, RouterOutput, balance_loss, routed_group_attention
from pallas_kernels import group_attention, window_attention

__all__ = [
  "DENSE",
  "AttentionConfig",
  "DiTConfig",
  "GroupRouter",
  "MoGAAttention",
  "RouterOutput",
  "VideoDiT",
  "balance_loss",
  "group_attention",
  "routed_group_attention",
  "window_attention",
]
