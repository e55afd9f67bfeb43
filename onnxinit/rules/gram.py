"""A sequence's Gram matrix: ``Y = A @ A^T`` (``MatMul(a, Transpose(a))`` swapping the last two
axes), the scores of an attention without projections (Keras' ``Attention()([x, x])``,
``use_scale`` or not: ``Mul`` by a constant after it).

Rows ``a_i`` independent across the tokens, features ``a_ik ~ N(mu_k, nu_k)`` (per token where
the statistics are): a cell off the diagonal is a product of two independent rows,
``E = sum_k mu_ik mu_jk``, ``Var = sum_k [(nu_ik + mu_ik^2)(nu_jk + mu_jk^2) - mu_ik^2 mu_jk^2]``;
the diagonal is the row's squared norm ``||a_i||^2``, ``E = sum_k (mu_ik^2 + nu_ik)``, ``Var =
sum_k (2 nu_ik^2 + 4 mu_ik^2 nu_ik)``. Taken as independent operands the diagonal read the
off-diagonal law: a Keras self-attention's scores 0.15x of the measured variance (the diagonal
``D nu`` stands out of cells of standard deviation ``sqrt(D) nu``) and the softmax after them
0.4x. The output keeps its ``[T, T]`` grid (up to ``_CAP`` cells) so that a Softmax reads the
diagonal per element.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext
from .row_norm import skip_casts

_CAP = 1 << 16  # cells of the [T, T] grid kept


def is_gram(ctx: RuleContext) -> bool:
    """The MatMul's right operand is its left operand with the last two axes swapped."""
    return gram_node(ctx.graph, ctx.node)


def gram_node(graph, node) -> bool:
    """:func:`is_gram` of ``node`` in ``graph``."""
    node_id = graph.producer.get(skip_casts(graph, node.input[1]))
    if not node_id or graph.node(node_id).op_type != "Transpose":
        return False
    t = graph.node(node_id)
    rank = len(graph.shape(t.input[0]) or ())
    perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), None)
    swapped = list(range(rank - 2)) + [rank - 1, rank - 2]
    return rank >= 2 and perm == swapped and skip_casts(graph, t.input[0]) == skip_casts(
        graph, node.input[0])


def gram(ma: np.ndarray, va: np.ndarray, rank: int, t: int, factor=None) -> Moments | None:
    """``A @ A^T`` from A's statistics ``[..., T or 1, K]`` at ``rank`` (module docstring), the
    output ``[..., t, t]``; None when the grid would exceed ``_CAP`` cells. ``factor``: the
    contracted features' correlation (``covariance_readers.contraction_factor``, ``tr C^2``
    over its diagonal), which both variances take (``Var ||a||^2 = 2 tr C^2`` at mean 0)."""
    second = va + ma * ma
    if t * t > _CAP:
        return None
    ma, va, second = (np.broadcast_to(x, x.shape[:-2] + (t, x.shape[-1])) for x in (ma, va, second))
    swap = (lambda x: np.swapaxes(x, -1, -2))  # noqa: E731
    off_mean = np.matmul(ma, swap(ma))
    off_var = np.matmul(second, swap(second)) - np.matmul(ma * ma, swap(ma * ma))
    diag_mean = second.sum(axis=-1)
    diag_var = (2 * va * va + 4 * ma * ma * va).sum(axis=-1)
    if factor is not None:
        off_var, diag_var = off_var * factor, diag_var[..., None] * factor
        diag_var = diag_var[..., 0] if np.ndim(factor) == 0 else diag_var
    eye = np.eye(t, dtype=bool)
    mean = np.where(eye, diag_mean[..., :, None], off_mean)
    var = np.where(eye, diag_var[..., :, None], np.maximum(off_var, 0.0))
    lead = (1,) * (rank - mean.ndim)
    return Moments(mean.reshape(lead + mean.shape), var.reshape(lead + var.shape))


def correlated_gram(ctx: RuleContext, a: Moments, squared: float, out: Moments | None
                    ) -> Moments | None:
    """The Gram rule's ``out`` for rows whose features correlate (``squared``: the mean squared
    correlation of two features, ``rules/feature_pairs``): both variances times ``tr C^2 /
    sum_k nu_k^2 = 1 + squared ((sum nu)^2 - sum nu^2) / sum nu^2`` (a dense layer's output of
    fewer inputs than features: rank-deficient rows); None where the node is not a Gram
    matrix or the features are independent."""
    if not squared or out is None or not is_gram(ctx):
        return None
    k = ctx.in_shape(0)[-1]
    nu = a.values_along(-1, k)[1]
    sum2 = float(np.sum(nu * nu))
    if not sum2 > 0:
        return None
    factor = 1.0 + squared * (float(np.sum(nu)) ** 2 - sum2) / sum2
    return Moments(out.mean, np.asarray(out.var) * factor)


__all__ = ["correlated_gram", "gram", "gram_node", "is_gram"]
