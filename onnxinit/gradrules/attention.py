"""Backward rule of MatMul of two activations (attention's Q K^T and P V): ``Y = A B`` over
the inner dimension K, ``dA = dY B^T`` and ``dB = A^T dY``. Operands independent, elements
independent::

    E[dA^2] = N E[dY^2] E[B^2],   E[dB^2] = M E[A^2] E[dY^2]

for A ``[..., M, K]`` and B ``[..., K, N]`` (whole-tensor statistics).
"""

from __future__ import annotations

from ..rules.context import RuleError
from .context import GradContext
from .gradient import Gradient
from .registry import rule


def _second(ctx: GradContext, index: int) -> float:
    m, v = ctx.x(index).total()
    return v + m * m


def matmul_activations(grads, ctx: GradContext):
    """See the module docstring."""
    if not (ctx.is_signal(0) and ctx.is_signal(1)):
        raise RuleError("MatMul with a constant operand")
    a_shape, b_shape = ctx.in_shape(0), ctx.in_shape(1)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise RuleError("MatMul of vectors")
    m_rows, n_cols = a_shape[-2], b_shape[-1]
    gm, gv = grads[0].total()
    dy2 = gv + gm * gm
    return [Gradient.scalar(0.0, n_cols * dy2 * _second(ctx, 1)),
            Gradient.scalar(0.0, m_rows * dy2 * _second(ctx, 0))]
