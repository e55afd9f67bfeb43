"""A mask of one signal against a constant, cast to float, as an element-wise step function of
that signal: ``Cast(Greater(x, c))`` is ``1[x > c]``, ``Cast(Not(Greater(x, c)))`` is
``1[x <= c]``.

tf2onnx writes TensorFlow's ``SelectV2(x > t, x, a)`` (Keras' ``ReLU(threshold=t,
negative_slope=s)``, ``where`` in custom layers) as ``Cast(x > t) * x + Cast(Not(x > t)) * a``:
a product of the signal and a mask of that same signal. The comparison's output is boolean, no
signal, so the fusion search (:mod:`.fusion`) stopped at the Cast and the product took the mask
and x as independent (``E[1[x > t]] E[x^2]``: Keras' thresholded ReLU 0.49x of onnxruntime's
variance). With the mask a function of x, the product is one of x (``x 1[x > t]``), integrated
over x's law in closed form (:func:`.piecewise.linear_pieces` reads the key ``("Step", c,
above)``: 1 where ``x > c`` when ``above`` is 1.0, where ``x < c`` when it is 0.0).

:func:`step_of` answers for a Cast to a float type whose input is a comparison (Greater,
GreaterOrEqual, Less, LessOrEqual) of one signal and a scalar constant, through any number (up
to 4) of Nots; the boundary ``x = c`` has probability 0, so ``>`` and ``>=`` are one step.
:func:`boolean_cast` gives that Cast its own moments, the step function over x's law (a
Bernoulli of ``p = P(x > c)``: ``E = p``, ``Var = p (1 - p)`` on a Gaussian x), where the
empirical fallback ran it alone before (a note, and a warning, on every such export).
"""

from __future__ import annotations

import numpy as np

from ..dtypes import FLOAT_TYPES
from ..moments import Elementwise, Moments
from .context import RuleContext
from .elementwise import apply_fn, rank_of
from .piecewise_fns import piecewise_fn
from .random_draws import comparison_draw

# comparison -> whether it is true where the signal (its first operand) is above the constant
_ABOVE = {"Greater": True, "GreaterOrEqual": True, "Less": False, "LessOrEqual": False}
MAX_NOTS = 4


def step_fn(c: float, above: bool) -> Elementwise:
    """``1[x > c]`` (``above``) or ``1[x < c]`` as a piecewise constant function."""
    low, high = (0.0, 1.0) if above else (1.0, 0.0)
    pieces = [(-np.inf, c, (low, 0.0, 0.0)), (c, np.inf, (high, 0.0, 0.0))]
    return piecewise_fn(("Step", float(c), 1.0 if above else 0.0),
                        lambda x: np.where(x > c, high, low), pieces).elementwise


def step_of(ctx: RuleContext) -> tuple[str, Elementwise] | None:
    """(x, the step function) when the node is a Cast to float of a comparison of signal x with
    a scalar constant (through Nots); None otherwise."""
    node, graph = ctx.node, ctx.graph
    if node.op_type != "Cast" or ctx.attr("to") not in FLOAT_TYPES or not node.input:
        return None
    tensor, flipped = node.input[0], False
    for _ in range(MAX_NOTS + 1):
        node_id = graph.producer.get(tensor)
        if node_id is None:
            return None
        op = graph.node(node_id)
        if op.op_type == "Not" and op.domain in ("", "ai.onnx"):
            tensor, flipped = op.input[0], not flipped
            continue
        if op.op_type not in _ABOVE or op.domain not in ("", "ai.onnx") or len(op.input) != 2:
            return None
        signals = [graph.is_signal(name) for name in op.input]
        if sum(signals) != 1:
            return None
        which = signals.index(True)
        value = graph.value(op.input[1 - which])
        if value is None or np.size(value) != 1 or not np.isfinite(np.ravel(value)[0]):
            return None
        above = _ABOVE[op.op_type] == (which == 0)  # Greater(c, x) is x < c
        return op.input[which], step_fn(float(np.ravel(value)[0]), above != flipped)
    return None


def boolean_cast(ctx: RuleContext) -> Moments | None:
    """The moments of a Cast to float of a boolean: a comparison of a uniform draw
    (:func:`.random_draws.comparison_draw`) or a step function of a signal (:func:`step_of`)."""
    drawn = comparison_draw(ctx)
    if drawn is not None:
        return drawn
    found = step_of(ctx)
    if found is None or found[0] not in ctx.known:
        return None
    return apply_fn(ctx.known[found[0]], found[1], rank_of(ctx))


__all__ = ["MAX_NOTS", "boolean_cast", "step_fn", "step_of"]
