"""moga-jax: Mixture-of-Groups Attention for long-video diffusion transformers in JAX/Flax."""

from moga_jax.routing import GroupRouter, RouterOutput, balance_loss, routed_group_attention
from pallas_kernels import group_attention

__all__ = [
    "GroupRouter",
    "RouterOutput",
    "balance_loss",
    "group_attention",
    "routed_group_attention",
]
