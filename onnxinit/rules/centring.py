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

Where x is a Gaussian itself (no chain: a Conv's or a dense layer's output, a patch
embedding's tokens that a LayerNorm below opset 17 centres), d is a Gaussian too, and the
identity above is exact for its variance pooled over the reduced axes:
``mean_i Var d_i = mean_i Var x_i - Var m`` (``Var m`` the mean rule's, which reads the
correlations of the reduced values); each element takes ``Var x_i (1 - Var m / mean_i Var
x_i)``, ``E d_i = E x_i - E m``. Not modelled: how ``Cov(x_i, m)`` differs between elements
(a channel whose kernel is closer to the mean kernel loses more). SegFormer's patch
embeddings at opset 14: the independent sum ``Var x + Var m`` read 1.14x, and its square
1.29x.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..strict import fall_back
from .context import RuleContext, RuleError
from .centred_law import centred_law
from .elementwise import ElementwiseFn, apply_fn, digest
from .gaussian import expand
from .grids import finish, operand, signal_axes
from .reduce_axes import node_axes


def _has_chain(x: Moments) -> bool:
    cells = x.spatial.cells if x.spatial is not None else x
    return cells.source is not None and bool(cells.source.chain)


def _is_plain_gaussian(x: Moments) -> bool:
    """Moments that describe a Gaussian (no chain, no mixture, rows or position classes; a
    correlation along the tokens is allowed, and not carried to the centred values, as the
    independent sum did not)."""
    return (x.mixture is None and x.rows is None and x.spatial is None
            and (x.source is None or not x.source.chain))


def _centred_gaussian(inputs, ctx: RuleContext, rank: int, axes) -> Moments | None:
    """``x - ReduceMean(x, axes)`` of a Gaussian x: E = E x - E m, Var = Var x (1 - Var m /
    mean_axes Var x), the pooled variance ``mean Var x - Var m`` exact."""
    mean_x, var_x, _ = operand(inputs, ctx, 0, rank)
    mean_m, var_m, _ = operand(inputs, ctx, 1, rank)
    if var_x.ndim not in (0, rank):
        return None
    varying = tuple(a for a in axes if var_x.ndim and var_x.shape[a] > 1)
    pooled = np.mean(var_x, axis=varying, keepdims=True) if varying else var_x
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(pooled > 0, 1.0 - var_m / pooled, 1.0)
    if not np.all(np.isfinite(share)):
        return None
    return finish(mean_x - mean_m, var_x * np.clip(share, 0.0, 1.0), signal_axes(inputs, rank))


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
    if not shape_x or not shape_m or len(shape_x) != len(shape_m) or len(shape_x) != rank:
        return None
    if not _has_chain(x):
        if not _is_plain_gaussian(x):
            return None
        axes = node_axes(mean_node, ctx.graph, rank)
        return None if axes is None else _centred_gaussian(inputs, ctx, rank, axes)
    axes = node_axes(mean_node, ctx.graph, rank)
    if axes is not None:
        mean_x, var_x, _ = operand(inputs, ctx, 0, rank)
        mean_m, var_m, _ = operand(inputs, ctx, 1, rank)
        varying = tuple(a for a in axes if var_x.ndim and var_x.shape[a] > 1)
        pooled = np.mean(var_x, axis=varying, keepdims=True) if varying else var_x
        found = centred_law(x, mean_x, var_x, mean_m, var_m, pooled, rank)
        if found is not None:
            return found
    c = expand(np.asarray(m.mean, dtype=np.float64), rank)
    if c.ndim != rank or not np.all(np.isfinite(c)):
        return None
    f = ElementwiseFn(("Affine", "sub", *digest(c)), lambda v: v - c, affine=(1.0, -c))
    try:
        return apply_fn(x, f, rank)
    except (RuleError, ValueError, TypeError, IndexError) as exc:  # the independent sum then
        fall_back(exc, (RuleError,))
        return None


__all__ = ["centred"]
