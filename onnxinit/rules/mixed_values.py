"""The covariance of an attention output's features, for the dense layer that reads it (the
output projection after the heads are merged back).

``O = P V`` per head, ``V = x W_v`` (+ bias) split into heads: the values' features are
correlated, ``S_v = W_v^T S_x W_v`` (``S_x`` x's field, else ``diag(nu_x)``; of order
``1/sqrt(D)``, across heads as within one), and averaging over the keys keeps that::

    Cov(O_c, O_c') = G_hh' S_v[c, c'],   G_hh' = mean_q sum_kl E[p^h_qk] E[p^h'_ql] cov[k, l]
                                         (+ sum_k Var(p^h_qk) cov[k, k] when h = h')

(h, h' the heads of features c, c'; ``cov`` the values' token correlation, the identity for
independent tokens; the heads' probabilities taken as independent). The dense layer then
sums ``w_j^T C w_j`` where the independent-features rule sums only the diagonal (O's own
variances): ``nn.MultiheadAttention``'s output projection was 1.04-1.07x onnxruntime (cross
terms 6% of the variance, across heads as large as within). One factor per feature serves
every position, so windows masked differently (Swin's shifted windows: a mask added through a
Reshape between Q K^T and the softmax) get none: their edge windows, cropped after the roll
back, read 1-2% lower with it.

Found by its layout alone: from the reader's input back through layout ops to a MatMul of a
softmax and V, from V back through layout ops (a Gather or Split of a fused projection
included) to a MatMul by a constant 2-D weight; the weight's column of every feature is
propagated forward through those ops as an integer label (so any split into heads, batch
merged or not, and any merge back is read as the exporter wrote it). None where any step is
not such an op, the labels are not one column per feature the same at every position, or
the work (``E^2 D``) is over ``MAX_WORK``.
"""

from __future__ import annotations

import numpy as np

from .channel_covariance import row_covariance as field
from .context import RuleContext
from .merged_heads import merged_heads, value_covariance


def output_covariance(ctx: RuleContext, name: str) -> np.ndarray | None:
    """The covariance [E, E] of the last-axis features of ``name`` (module docstring), its
    diagonal ``name``'s own per-feature variances; None where ``name`` is not found to be an
    attention output merged over heads."""
    graph, known = ctx.graph, ctx.known
    found = merged_heads(ctx, name)
    if found is None:
        return None
    x = found[1]
    d = graph.shape(x)[-1] if graph.shape(x) else None
    f = field(ctx, x)
    if f is not None and f.axis == len(graph.shape(x)) - 1 and f.head_axis is None and \
            f.cov.shape == (d, d):
        s_x = f.cov
    else:
        s_x = np.diag(known[x].values_along(-1, found[2].shape[0])[1])
    return value_covariance(ctx, name, found, s_x)


__all__ = ["output_covariance"]
