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

Ids flattened to one axis ``[B*S]`` before the Gather (M2M100's sinusoidal positions,
``index_select(0, positions.view(-1))``) cannot keep a per-position mean along an axis that
merges the batch: their rows' spread goes to the token field instead (``_as_field``, token index
= element index mod S). Pooled as noise drawn per token, a causal attention (each token's prefix
averaged) averaged away the smooth per-position pattern that it keeps: M2M100's decoder P V
0.58-0.75x, within 10% now.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments, compressed
from .context import RuleContext
from .masks import evaluated
from .upstream_nodes import upstream
from .token_field import attach, grid, profile_grid

_DRAWS = 4
_LAYOUT = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
_MAX_ELEMENTS = 1 << 24  # gathered values held while averaging (samples x elements x features)
_TRACKED = 1 << 16  # statistics a tensor tracks (propagate.MAX_TRACKED, which imports the rules)


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
    flat = _flattened(graph, shape, found[1])
    if flat is not None:
        shape = flat
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
    if flat is not None:
        return _as_field(rows, ctx.out_shape(0), axis=0)
    mean = rows.mean(axis=0)
    var = np.maximum((rows**2).mean(axis=0) - mean**2, 0.0)
    out = (1, *shape[1:], table.shape[1])
    if mean.size <= _TRACKED or len(shape) != 2:
        return compressed(mean.reshape(out), var.reshape(out))
    return _as_field(rows, ctx.out_shape(0))


def _flattened(graph, shape, inputs) -> tuple[int, int] | None:
    """``(B, N / B)`` when the ids are one axis of ``N`` elements, the token ids' ``[B, ...]``
    flattened (an exporter's ``positions.view(-1)`` before the Gather: M2M100, FSMT), so
    element ``e`` is sample ``e // (N / B)``'s element ``e % (N / B)``; else None."""
    if not shape or len(shape) != 1 or len(inputs) != 1:
        return None
    source = graph.shape(next(iter(inputs)))
    if not source or len(source) < 2 or int(np.prod(source)) != shape[0] or source[0] < 1:
        return None
    return source[0], shape[0] // source[0]


def _as_field(rows: np.ndarray, shape, axis: int = 1) -> Moments:
    """Per-position rows (sampled ``[samples, S, D]``) over the statistics a tensor tracks
    (``propagate.MAX_TRACKED``: BERT-size tables at 128 tokens), pooled over the positions, their
    spread kept by the token field: about the centre ``m_d`` (the mean over samples and
    positions), ``Sigma[s, t] = mean_{n,d} (r_nsd - m_d)(r_ntd - m_d)``. The positions' rows are
    mostly deterministic, so an average over every position cancels them (an attention nearly
    uniform over the tokens: pooled as noise they counted ``1/S`` of their variance); a padding
    token that shifts the later positions moves them together, which the samples keep."""
    centre = rows.mean(axis=(0, 1))
    centred = rows - centre
    pooled = (centred**2).mean(axis=(0, 1))
    sig = np.einsum("nsd,ntd->st", centred, centred) / (rows.shape[0] * rows.shape[2])
    d = rows.shape[2]
    lead = (1,) * (len(shape) - 1)
    return attach(Moments(centre.reshape(*lead, d), pooled.reshape(*lead, d)), shape, [axis],
                  sig)


def picked_ids(ctx: RuleContext, indices: str, size: int) -> np.ndarray | None:
    """A Gather's ``indices`` computed from the token ids (CLIP's text embedding, taken at
    ``argmax(ids == eos)`` of each sample; a classifier's last non-padding token), evaluated on
    ``_DRAWS`` seeded batches, modulo the gathered axis' ``size``: [draws, *indices' shape], or
    None (not computed from the token ids alone)."""
    graph = ctx.graph
    found = upstream(graph, indices, token_ids=True)
    shape = graph.shape(indices)
    if found is None or not found[1] or shape is None:
        return None
    if _DRAWS * int(np.prod(shape, dtype=np.int64)) * size > _MAX_ELEMENTS:
        return None
    runs = evaluated(graph, found, range(ctx.settings.seed, ctx.settings.seed + _DRAWS))
    if runs is None:
        return None
    return np.stack([np.asarray(r[indices], dtype=np.int64) for r in runs]) % size


def picked_rows(ctx: RuleContext, x: Moments, shape) -> Moments | None:
    """``Gather(x, ids)`` along axis 0 of an activation ``x`` by ids computed from the token
    ids (:func:`picked_ids`): per element of the ids, the mixture of the rows it picks over
    the draws, ``E = mean_k mu[i_k]``, ``Var = mean_k (nu[i_k] + mu[i_k]^2) - E^2`` (each row
    its own means and variance: the token field's profile spelled out); None otherwise."""
    if ctx.attr("axis", 0) % len(shape) != 0:
        return None
    ids = picked_ids(ctx, ctx.node.input[1], shape[0])
    if ids is None:
        return None
    shares = np.eye(shape[0])[ids]
    mean, var = grid(profile_grid(x, shape) or x, len(shape))
    rest = np.broadcast_shapes(mean.shape[1:], var.shape[1:])
    mean = np.broadcast_to(mean, (shape[0],) + rest).reshape(shape[0], -1)
    var = np.broadcast_to(var, (shape[0],) + rest).reshape(shape[0], -1)
    weights = shares.reshape(-1, shape[0])
    if weights.shape[0] * mean.size > _MAX_ELEMENTS:
        return None
    e = (weights @ mean).reshape(shares.shape[:-1] + (-1,)).mean(axis=0)
    second = (weights @ (var + mean * mean)).reshape(shares.shape[:-1] + (-1,)).mean(axis=0)
    out = e.shape[:-1] + rest
    return compressed(e.reshape(out), np.maximum(second - e * e, 0.0).reshape(out))


__all__ = ["picked_ids", "picked_rows", "positional_rows"]
