"""A sum with an operand that is exactly zero in every sample: a residual branch initialised to
zero (its last BatchNorm's scale, or its last conv, set to 0: TResNet, NF-Nets' skip gains,
timm's ``zero_init_last``), so that ``h + f(h) = h`` at initialization.

The sum is then the other operand exactly, law included: ``x + 0`` keeps x's element-wise
chain (the LeakyReLU under it), where the sum of independent operands keeps only its mean and
variance, so that a ReLU after it (a ReLU of a LeakyReLU is a ReLU of its Gaussian) read 0.63x
of the measured variance as a ReLU of a Gaussian with the sum's moments.

Zero means mean 0 and variance 0 everywhere (the propagated moments of a product by a zero
scale, a conv of zero weights...). Only when the kept operand already has the output's shape
(no broadcasting), for Sub only ``x - 0``, and only when the kept operand carries a law that
the sum would lose (an element-wise chain or a mixture): a plain Gaussian operand (a
BatchNorm's output) goes through the sum's own rule, as before. Passed through whole, such an
operand's fields (its channel covariance, its BatchNorm flags) are read downstream as they are.

A ReLU of the kept stream then appends a ReLU to its chain at every block; it is written as one
(:func:`appended`, used by the element-wise rules), which is exact and which the chain's
downstream readers need (without it TResNet-M fell 95.3% -> 65.4% within 10%).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext


def _zero(m: Moments) -> bool:
    return (m.mixture is None and not np.any(np.asarray(m.mean))
            and not np.any(np.asarray(m.var)))


def appended(chain: tuple, f) -> tuple:
    """An element-wise chain followed by ``f``, with a ReLU after a ReLU or a LeakyReLU of
    positive slope written as one ReLU (``relu(relu(z)) = relu(leaky_relu(z)) = relu(z)``): a
    stream kept through the zero branches passes one more ReLU per block, and the readers of
    a chain's law downstream took the repeated chain wrongly (TResNet-M: the LeakyReLU after
    layer 3's first conv and BatchNorm 1.3-4.3x before this, within 10% after)."""
    if f.key == ("Relu",) and chain and (chain[-1].key == ("Relu",) or (
            chain[-1].key[0] == "LeakyRelu" and chain[-1].key[1] > 0)):
        return chain[:-1] + (f,)
    return chain + (f,)


def _carries_a_law(m: Moments) -> bool:
    """The operand is described beyond its moments: an element-wise chain of a Gaussian, or a
    mixture (per cell where it has position classes)."""
    cells = m.spatial.cells if m.spatial is not None else m
    return m.source is not None or m.mixture is not None or (
        cells.source is not None and cells.source.chain) or cells.mixture is not None


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
        kept = inputs[keep]
        if (_zero(inputs[zero]) and _carries_a_law(kept) and out_shape is not None
                and ctx.graph.shape(ctx.node.input[keep]) == out_shape):
            return inputs[keep]
    return None
