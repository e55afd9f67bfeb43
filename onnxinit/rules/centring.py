"""Values centred on their own mean, ``d = x - mean(x)`` (a LayerNorm written out, over any
axes: TorchScript's ``Sub(x, ReduceMean(x))``, tf2onnx's moments), as a shift of x's law.

The Add/Sub rule takes two signals as independent: ``Var d = Var x + Var m`` and ``d`` a
Gaussian of those moments, where x's law (its source: a Gaussian through ReLU, tanh ...) is
lost. The mean m over K values of x moves with them: ``sum_i Cov(x_i, m) = K Var m``, so on
average ``Var(x_i - m) = Var x_i - Var m``, and ``Var m`` is of order ``Var x / K`` (correlated
values: a few times that). Here d keeps x's law shifted by ``E[m]`` (per kept index):
``Var d = Var x``, within ``Var m`` of the truth, and the square after it (``Pow(d, 2)``, the
variance statistic) integrates x's chain: a centred ReLU map's square read 1.19-1.21x of its
measured variance as a Gaussian's, a centred tanh row's 2.1x (tanh is bounded: its square
varies less than a Gaussian's).

Applies where x is an element-wise chain of a Gaussian (a source with a chain, in the
position classes too) and m is ``ReduceMean(x)`` with its axes kept.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .elementwise import ElementwiseFn, apply_fn, digest
from .gaussian import expand


def _has_chain(x: Moments) -> bool:
    cells = x.spatial.cells if x.spatial is not None else x
    return cells.source is not None and bool(cells.source.chain)


def centred(inputs, ctx: RuleContext, rank: int) -> Moments | None:
    """``x - m`` with m ``ReduceMean(x)`` (keepdims) as x's law shifted by ``E[m]``; None for
    any other Sub."""
    node = ctx.node
    if node.op_type != "Sub" or len(node.input) != 2 or any(m is None for m in inputs[:2]):
        return None
    producer = ctx.graph.producer.get(node.input[1])
    if producer is None:
        return None
    mean_node = ctx.graph.node(producer)
    if mean_node.op_type != "ReduceMean" or mean_node.input[0] != node.input[0]:
        return None
    x, m = inputs[0], inputs[1]
    shape_x, shape_m = ctx.graph.shape(node.input[0]), ctx.graph.shape(node.input[1])
    if (not shape_x or not shape_m or len(shape_x) != len(shape_m) or len(shape_x) != rank
            or not _has_chain(x)):
        return None
    c = expand(np.asarray(m.mean, dtype=np.float64), rank)
    if c.ndim != rank or not np.all(np.isfinite(c)):
        return None
    f = ElementwiseFn(("Affine", "sub", *digest(c)), lambda v: v - c, affine=(1.0, -c))
    return apply_fn(x, f, rank)


__all__ = ["centred"]
