"""The custom VJP every block-sparse implementation shares (FlashAttention-2 style).

Loops with dynamic bounds and bare `pallas_call`s are not reverse-differentiable, so each
implementation supplies a forward that also returns the log-sum-exp and a backward that
recomputes scores from it; this module wires the two into one differentiable function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax


def flash_attention_vjp(forward: Callable, backward: Callable) -> Callable:
  """attention(q, k, v, mask, scale, option) with a custom VJP.

  forward(q, k, v, mask, scale, option) -> (out, lse)
  backward(q, k, v, out, lse, do, mask, scale, option) -> (dq, dk, dv)
  `scale` and `option` (a chunk size, an interpret flag) are static; the mask's integer arrays
  get no cotangent.
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
  def attention(q, k, v, mask, scale, option):
    return forward(q, k, v, mask, scale, option)[0]

  def fwd(q, k, v, mask, scale, option):
    out, lse = forward(q, k, v, mask, scale, option)
    return out, (q, k, v, mask, out, lse)

  def bwd(scale, option, residuals, do):
    q, k, v, mask, out, lse = residuals
    return (*backward(q, k, v, out, lse, do, mask, scale, option), None)

  attention.defvjp(fwd, bwd)
  return attention
