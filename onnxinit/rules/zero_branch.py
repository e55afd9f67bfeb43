"""A sum with an operand that is exactly zero in every sample: a residual branch initialised to
zero (its last BatchNorm's scale, or its last conv, set to 0: TResNet, NF-Nets' skip gains,
timm's ``zero_init_last``), so that ``h + f(h) = h`` at initialization.

The sum is then the other operand exactly, law included: ``x + 0`` keeps x's element-wise
chain (the LeakyReLU under it), where the sum of independent operands keeps only its mean and
variance, so that a ReLU after it (a ReLU of a LeakyReLU is a ReLU of its Gaussian) read 0.63x
of the measured variance as a ReLU of a Gaussian with the sum's moments.

Zero means mean 0 and variance 0 everywhere (the propagated moments of a product by a zero
scale, a conv of zero weights...). Only when the kept operand already has the output's shape
(no broadcasting), and for Sub only ``x - 0``.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext


def _zero(m: Moments) -> bool:
    return (m.mixture is None and not np.any(np.asarray(m.mean))
            and not np.any(np.asarray(m.var)))


def zero_branch_sum(inputs, ctx: RuleContext) -> Moments | None:
    """The non-zero operand's moments when the other is exactly zero (module docstring);
    None otherwise."""
    op = ctx.node.op_type
    if op not in ("Add", "Sub") or len(inputs) != 2 or any(m is None for m in inputs):
        return None
    out_shape = ctx.graph.shape(ctx.node.output[0])
    for keep, zero in ((0, 1), (1, 0)):
        if op == "Sub" and keep == 1:
            continue
        if (_zero(inputs[zero]) and not _zero(inputs[keep]) and out_shape is not None
                and ctx.graph.shape(ctx.node.input[keep]) == out_shape):
            return inputs[keep]
    return None
