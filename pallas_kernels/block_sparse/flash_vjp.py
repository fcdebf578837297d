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
  """attention(q, k, v, mask, scale, options, pattern="block_sparse") with a custom VJP.

  forward(q, k, v, mask, scale, options, pattern) -> (out, lse)
  backward(q, k, v, out, lse, do, mask, scale, options, pattern) -> (dq, dk, dv)
  `scale`, `options` (a `KernelOptions`, resolved: interpret is a bool or InterpretParams) and
  `pattern` (the attention pattern's name, which names the kernels: moga_<pattern>_fwd / _dq /
  _dkdv) are static; the mask's integer arrays get no cotangent.
  """

  @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
  def attention(q, k, v, mask, scale, options, pattern="block_sparse"):
    return forward(q, k, v, mask, scale, options, pattern)[0]

  def fwd(q, k, v, mask, scale, options, pattern="block_sparse"):
    out, lse = forward(q, k, v, mask, scale, options, pattern)
    return out, (q, k, v, mask, out, lse)

  def bwd(scale, options, pattern, residuals, do):
    q, k, v, mask, out, lse = residuals
    return (*backward(q, k, v, out, lse, do, mask, scale, options, pattern), None)

  attention.defvjp(fwd, bwd)
  return attention


def kernel_name(pattern: str, kind: str) -> str:
  """The name a kernel carries in HLO and in profiles: moga_<pattern>_<fwd|dq|dkdv>."""
  return f"moga_{pattern}_{kind}"
