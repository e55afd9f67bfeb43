"""Rows of an embedding table gathered by ids computed from the token ids: position ids written
as ``cumsum(ids != pad) * (ids != pad) + pad`` (RoBERTa, MPNet, XLM-R), and the like.

Such ids are not uniform over the table: each position draws its own row (positions 2..S+1 of a
table of 514) unless its token is the padding id. Taken as uniform (the rule for token ids), the
rows become noise drawn per token, with the table's mean as a mean shared by every token, so a
mean over tokens (an attention output ``P V``, whose P is nearly uniform) keeps a shared part
that the real positions average away (MPNet's P V 1.4-1.5x).

The ids' law is sampled: the ids subgraph is evaluated on ``_DRAWS`` seeded batches of synthetic
inputs (masks.evaluated), and each element e (the batch axis pooled with the draws) has the
frequency ``f_e(v)`` of each row v. When every element takes one id in at least half of the
samples (the ids are positional, with rare exceptions), the gathered rows' moments are, per
element and feature d::

    E = sum_v f_e(v) T[v, d],   Var = sum_v f_e(v) T[v, d]^2 - E^2

Otherwise (ids as random as the tokens) None: the uniform rule stands.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments, compressed
from .context import RuleContext
from .masks import evaluated, upstream

_DRAWS = 4
_LAYOUT = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
_MAX_ELEMENTS = 1 << 24  # gathered values held while averaging (samples x elements x features)


def _modal_share(ids: np.ndarray) -> float:
    """The smallest, over the columns of ``ids`` [samples, elements], of the share of samples
    taking the column's most frequent value."""
    ordered = np.sort(ids, axis=0)
    n = ordered.shape[0]
    best = np.zeros(ordered.shape[1], dtype=np.int64)
    run = np.ones(ordered.shape[1], dtype=np.int64)
    for i in range(1, n):
        same = ordered[i] == ordered[i - 1]
        run = np.where(same, run + 1, 1)
        best = np.maximum(best, run)
    return float(np.min(np.maximum(best, 1))) / n


def positional_rows(ctx: RuleContext, table: np.ndarray, axis: int) -> Moments | None:
    """Moments of ``Gather(table, ids)`` (axis 0, a 2-D table) when the ids are computed from
    the token ids and positional (module docstring), else None."""
    graph = ctx.graph
    ids_name = ctx.node.input[1]
    if axis != 0 or table.ndim != 2 or ids_name in graph.input_names:
        return None
    found = upstream(graph, ids_name, token_ids=True)
    if found is None or not found[1] or all(
            graph.node(n).op_type in _LAYOUT for n in found[0]):
        return None
    shape = graph.shape(ids_name)
    if not shape or len(shape) < 2:
        return None
    samples = _DRAWS * shape[0]
    elements = int(np.prod(shape[1:]))
    if samples * elements * table.shape[1] > _MAX_ELEMENTS:
        return None
    runs = evaluated(graph, found, range(ctx.settings.seed, ctx.settings.seed + _DRAWS))
    if runs is None:
        return None
    ids = np.concatenate([np.asarray(r[ids_name]) for r in runs]).reshape(samples, elements)
    ids = ids.astype(np.int64) % table.shape[0]
    if _modal_share(ids) < 0.5:
        return None
    rows = np.asarray(table, dtype=np.float64)[ids]  # [samples, elements, D]
    mean = rows.mean(axis=0)
    var = np.maximum((rows**2).mean(axis=0) - mean**2, 0.0)
    out = (1, *shape[1:], table.shape[1])
    return compressed(mean.reshape(out), var.reshape(out))


__all__ = ["positional_rows"]
