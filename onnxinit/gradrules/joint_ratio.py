"""The gradient factors of a Div whose operands the forward drew jointly
(:mod:`~onnxinit.rules.joint_samples`, :mod:`~onnxinit.rules.ratio_moments`): a ratio of two
sums that share their weights (RWKV's WKV recurrence, ``(e1 num + e2 v) / (e1 den + e2)``, its
denominator a sum of exponentials >= 1).

For ``y = a / b`` and dy independent of (a, b):

    da = dy / b         E[da] = E[dy] E[1/b],         E[da^2] = E[dy^2] E[1/b^2]
    db = -dy a / b^2    E[db] = -E[dy] E[a / b^2],    E[db^2] = E[dy^2] E[a^2 / b^4]

with the expectations over the joint draws, per cell, as the forward recorded them. The rule
of independent operands takes ``E[a^2] E[b^-4]`` over a Gaussian b of the forward's mean and
variance: RWKV's denominators (mean 2.4-5.5, variance 1.8-12 from step 11 on) put mass near
0, where ``b^-4`` has no finite mean (its check reported an exploding gradient: update ratio
2.75e15 at the first key projection, 2e-6 measured).
"""

from __future__ import annotations

import numpy as np

from ..rules.ratio_moments import recorded
from .context import GradContext


def joint_ratio_factors(ctx: GradContext) -> list[np.ndarray] | None:
    """``[E[1/b], E[1/b^2], -E[a/b^2], E[a^2/b^4]]`` per cell for the Div ``ctx.node``, as the
    forward recorded them over its joint draws; None where it did not (its operands were not
    drawn jointly, a moment was not finite) or the record is not of these forward moments."""
    output = ctx.node.output[0] if ctx.node.output else ""
    found = recorded(ctx.graph, output, ctx.forward.get(output))
    return None if found is None else list(found)
