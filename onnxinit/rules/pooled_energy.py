"""The covariance the energy a sample shares gives the channels of a global spatial mean, read
by the layer after it (a squeeze-excite block's first conv, a classifier).

A global pool of ``f(z)`` keeps the per-sample energy ``eps`` every channel shares
(:mod:`.sample_energy`): a sample with more energy moves every channel's mean, channel c by
``M_c(eps) - E M_c``. The pool rule adds each channel's ``Var_eps M_c``; the channels' means
move together, so they co-vary, ``Cov(g_c, g_c') = sum_r D_rc D_rc'`` over the points of eps
(:func:`.shared_pool.shared_deviations`, three lognormal nodes and each two-point factor),
and a linear layer ``y_j = sum_c W_jc g_c`` adds

    sum_{c != c'} W_jc W_jc' Cov(g_c, g_c') = sum_r (W_j . D_r)^2 - sum_c W_jc^2 sum_r D_rc^2.

Over random weights its mean is 0, but for one network's weights it is not: measured on
EfficientNet-B0 at 224x224 (32 batches of 8) the cross terms of the squeeze-excite convs
``fc1`` are -15% to +70% of their independent-channel variance, and a rank-one covariance along
the measured regression of the pooled means on the sample's energy gives the same -16% to +71%
from stage 3 on (features.5.2: +0.703 measured, +0.706).
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .pooled_features import pool_node
from .shared_pool import shared_deviations


def shared_cross_terms(ctx: RuleContext, w_in_out: np.ndarray) -> np.ndarray | None:
    """Per output j of the linear map ``w_in_out`` [C, J] reading ``ctx.node.input[0]`` (a
    global spatial mean, layout ops between): the cross terms above; None where the input is
    not such a mean of an element-wise chain carrying a shared energy."""
    graph, known = ctx.graph, ctx.known
    if known is None:
        return None
    w = np.asarray(w_in_out, np.float64)
    node_id = pool_node(ctx, ctx.node.input[0], w.shape[0])
    if node_id is None:
        return None
    pool = RuleContext(graph.node(node_id), node_id, graph, ctx.settings, known=known)
    source = pool.node.input[0]
    shape = graph.shape(source)
    if source not in known or shape is None:
        return None
    rows = shared_deviations(pool, known[source], tuple(int(s) for s in shape))
    if rows is None or rows.shape[1] != w.shape[0]:
        return None
    projected = rows @ w  # [R, J]
    return (projected * projected).sum(axis=0) - (w * w).T @ (rows * rows).sum(axis=0)


__all__ = ["shared_cross_terms"]
