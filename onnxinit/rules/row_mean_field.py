"""The mean over a row's features (the last axis alone) of a row whose covariance is carried
as a field (:func:`.channel_covariance.row_covariance`): ``Var[mean_d x_d] = 1^T S 1 / D^2``,
the rule's independent-features variance ``tr S / D^2`` times ``1^T S 1 / tr S``
(:func:`.correlated_means.sum_over_trace`; the reduce rule applies the same factor where the
row carries a field of its own, :func:`.correlated_means.field_sum_factor`).

:class:`.pair_algebra.Pairs` describe a row's correlations by their mean over the pairs: a
mean over a row of ``u^T x`` (``x`` a dense layer's input, ``u = W 1``) then reads ``u^T C u``
as ``u``'s length times C's mean diagonal and mean off-diagonal, right on average over
weights but not for the weights at hand: ``u^T C u`` is a quadratic form whose relative spread
over random ``u`` is ``sqrt(2 tr C^2) / tr C``, 20-30% for a 64-wide layer. A decomposed
LayerNorm (tf2onnx writes Keras' so) takes the per-token mean of ``h + f(h)`` with h a
normalised row, where only ``f``'s row mean varies: a ReLU MLP's, for example, ``1^T W_2^T
C_g W_2 1`` with ``C_g`` Mehler's map of ``W_1^T C_h W_1``, which the field holds exactly for
Gaussian rows (a dense layer starts one from its input's variances; centred rows are mapped
``P S P``). Means of squares (a mean square, a variance) are left to the Pairs: a field is a
Gaussian's covariance, and a normalised row's energy is not.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..moments import Moments
from .channel_covariance import row_covariance
from .context import RuleContext
from .correlated_means import sum_over_trace


def _is_square(ctx: RuleContext, name: str) -> bool:
    node_id = ctx.graph.producer.get(name)
    if node_id is None:
        return False
    node = ctx.graph.node(node_id)
    return node.op_type == "Pow" or (node.op_type == "Mul" and node.input[0] == node.input[1])


def field_row_mean(ctx: RuleContext, out: Moments, d: int) -> Moments | None:
    """``out`` (the mean over the last axis of the node's input, its features independent)
    with its variance times ``1^T S 1 / tr S``; None where the input has no field over the
    last axis, or is a square."""
    name = ctx.node.input[0]
    shape = ctx.graph.shape(name)
    if not shape or _is_square(ctx, name):
        return None
    field = row_covariance(ctx, name)
    if (field is None or field.head_axis is not None or field.axis != len(shape) - 1
            or field.cov.shape != (d, d)):
        return None
    factor = sum_over_trace(field.cov)
    if factor is None:
        return None
    return replace(out, var=np.asarray(out.var, np.float64) * factor, source=None, mixture=None)


__all__ = ["field_row_mean"]
