"""A signal plus a constant table that varies along the tokens starts the token field of the
table's per-position deviations: a learned position embedding (GPT-2's ``Add(Gather(wte, ids),
Gather(wpe, positions))``, the positions computed from the input's Shape and Range and folded to
a constant; ViT's or BERT's ``[1, S, D]`` table added to the tokens).

The arithmetic rule keeps one mean per feature for ``y[b, s, d] = x[b, s, d] + c[s, d]``, the
table's average over the positions ``cbar_d = mean_s c_sd``, and pools the positions'
deviations ``c_sd - cbar_d`` into the variance. Those deviations are the same in every sample,
so they are not independent tokens: they sum to zero over the positions, and an average over
positions (a causal attention's prefix averages ``P V``) keeps what ``P`` does to them, not the
independent tokens' ``1/n``. With ``x`` independent across tokens (feature-averaged variance
``v_s`` per token) the feature-averaged token covariance of ``y`` about its per-feature mean is::

    Sigma[s, t] = v_s delta_st + G[s, t],   G[s, t] = mean_d (c_sd - cbar_d)(c_td - cbar_d)

(``G`` the centred Gram of the table's rows; its rows sum to zero, so a mean over all positions
keeps nothing of it; ``x`` broadcast along the tokens, ``[B, 1, D]``: ``v`` in every entry).
Only for a table whose rows are uncorrelated across the positions (weights as drawn at init:
the mean square of the off-diagonal correlations ``G[s, t] / sqrt(G[s, s] G[t, t])`` at most
``UNCORRELATED / D``, ``D`` the features; independent rows give about ``1 / D``). A smooth table
(sinusoids, trained rows, a random walk over the positions) moves the features' means through
an average over positions: a causal attention's prefix averages weigh the first positions
more, so the output's mean per feature is not ``cbar`` but ``mean_t sum_s p_ts c_s``, which a
field about one mean per feature does not carry (tried: a random-walk table's ``P V`` read
1.64x without the field, 2.07x with it). Only where the rule pooled the table (the output's
mean the same for every token), no input already carries a field, the output has a batch axis
first and one token axis other than the features (the last axis), the table varies along that
axis and the features and is one value along the batch, no operand is a feature map, and the
tokens are at most ``MAX_TOKENS``.
"""

from __future__ import annotations

import numpy as np

from .context import RuleContext
from .token_field import attach, grid, profile

MAX_TOKENS = 1024  # a longer table's field (n x n) is not built
UNCORRELATED = 4.0  # times 1 / D: the rows' mean square correlation, at most (docstring)
OPS = frozenset({"Add", "Sub"})


def entry(ctx: RuleContext, inputs: list, outputs: list) -> list:
    """``outputs`` with the field ``v I + G`` (module docstring) where the node adds a signal
    and a position table; unchanged otherwise."""
    out = outputs[0] if outputs else None
    node, graph = ctx.node, ctx.graph
    if out is None or out.tokens is not None or len(node.input) != 2:
        return outputs
    signals = [i for i in range(2) if graph.is_signal(node.input[i])]
    if len(signals) != 1:
        return outputs
    which = signals[0]
    table = ctx.const(1 - which)
    out_shape, in_shape = graph.shape(node.output[0]), graph.shape(node.input[which])
    x = inputs[which] if which < len(inputs) else None
    if (table is None or x is None or not out_shape or not in_shape
            or x.spatial is not None or out.spatial is not None):
        return outputs  # a feature map's positions: the spatial correlation holds them
    rank = len(out_shape)
    axis = _token_axis(np.shape(table), out_shape)
    if axis is None or len(in_shape) != rank:
        return outputs
    gram = centred_gram(np.asarray(table, dtype=np.float64), rank, axis)
    mean, _ = grid(out, rank)
    if gram is None or mean.shape[axis] != 1 or not _uncorrelated(gram, np.size(table)):
        return outputs  # the rule kept a mean per token, or the table is one row or smooth
    n = int(out_shape[axis])
    if in_shape[axis] == 1:  # one value per sample for every token
        _, var = grid(x, rank)
        own = float(np.mean(var)) * np.ones((n, n))
    else:
        own = np.diag(profile(x, in_shape, [axis], n))
    return [attach(out, out_shape, [axis], own + gram)] + list(outputs[1:])


def _token_axis(shape, out_shape) -> int | None:
    """The one axis, neither the batch (first) nor the features (last), along which a table
    of ``shape`` varies, the table one value along the batch and varying along the features;
    None otherwise."""
    rank = len(out_shape)
    if rank < 3 or len(shape) > rank:
        return None
    full = (1,) * (rank - len(shape)) + tuple(shape)
    if full[0] != 1 or full[-1] < 2:
        return None
    varying = [a for a in range(1, rank - 1) if full[a] > 1]
    if len(varying) != 1 or full[varying[0]] != out_shape[varying[0]]:
        return None
    return varying[0] if 1 < out_shape[varying[0]] <= MAX_TOKENS else None


def _uncorrelated(gram: np.ndarray, size: int) -> bool:
    """The rows' correlations ``G[s, t] / sqrt(G[s, s] G[t, t])`` (s != t) have a mean square
    of at most ``UNCORRELATED / D``; False when a row does not vary."""
    n = gram.shape[0]
    d = np.diag(gram)
    if not np.all(d > 0):
        return False
    corr = gram / np.sqrt(np.outer(d, d))
    off = (float(np.sum(corr**2)) - n) / (n * (n - 1))
    return off <= UNCORRELATED * n / size


def centred_gram(table: np.ndarray, rank: int, axis: int) -> np.ndarray | None:
    """``G[s, t] = mean_d (c_sd - cbar_d)(c_td - cbar_d)`` over every element ``d`` of the
    table's other axes (an axis it is broadcast along weighs each of its values alike)."""
    if not np.all(np.isfinite(table)):
        return None
    full = table.reshape((1,) * (rank - table.ndim) + table.shape)
    rows = np.moveaxis(full, axis, 0).reshape(full.shape[axis], -1)
    centred = rows - rows.mean(axis=0, keepdims=True)
    return centred @ centred.T / centred.shape[1]


__all__ = ["MAX_TOKENS", "OPS", "centred_gram", "entry"]
