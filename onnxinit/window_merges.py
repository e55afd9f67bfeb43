"""Which Reshapes merge windows with the batch, and what goes with them: the merged axes
(:func:`merged_prefix`), exact padding in a grid (:func:`exact_somewhere`), the split before the
shifted windows' mask (:func:`split_before_offsets`) and windows that differ without padding or
mask (:func:`pooled_windows`). Used by :mod:`onnxinit.window_classes`."""

from __future__ import annotations

import math

import numpy as np

from .moments import Moments
from .rules.layout import full_grid

MAX_WINDOW_GRID = 1 << 20  # statistics of the per-window grid a merge reads


def merged_prefix(in_shape, out_shape) -> int | None:
    """j >= 2 with out_shape[0] = prod(in_shape[:j]) and the rest reshaped alone."""
    for j in range(2, len(in_shape)):
        if math.prod(in_shape[:j]) == out_shape[0] and in_shape[j - 1] > 1:
            if math.prod(in_shape[j:]) == math.prod(out_shape[1:]):
                return j
            return None
    return None


def exact_somewhere(x: Moments) -> bool:
    """Some elements are exactly constant (variance 0, a finite mean) and others are not:
    padding anywhere in the grid (``layout.holds_padding`` asks it of whole indices of one
    axis, up to its size cap; the merge bounds the grid itself)."""
    var = np.asarray(x.var)
    if var.size > MAX_WINDOW_GRID:
        return False
    exact = (var == 0) & np.isfinite(np.asarray(x.mean))
    return bool(exact.any()) and not bool(exact.all())


_OFFSETS = ("Add", "Sub")  # ops that add the mask, leaving the variances as they are


def split_before_offsets(graph, name: str) -> str | None:
    """The output of the Reshape that split tensor ``name``'s windows out of the batch
    (``[B*nW, ...] -> [B, nW, ...]``) before constants were added to it (Add or Sub: the
    shifted windows' mask, ``attn.view(B, nW, h, N, N) + mask``), else None."""
    for _ in range(4):
        producer = graph.producer.get(name)
        if producer is None:
            return None
        node = graph.node(producer)
        if node.op_type == "Reshape":
            before, after = graph.shape(node.input[0]), graph.shape(name)
            if before and after and len(after) == len(before) + 1 and after[0] > 0 \
                    and after[0] * after[1] == before[0] and tuple(after[2:]) == tuple(before[1:]):
                return name
            return None
        signals = [n for n in node.input if n and graph.is_signal(n)]
        if node.op_type not in _OFFSETS or len(signals) != 1 or node.input[0] != signals[0]:
            return None
        name = signals[0]
    return None


def pooled_windows(x: Moments, in_shape, out_shape, out: Moments) -> Moments | None:
    """A merge of windows whose statistics differ without padding (per-position means after
    a shifted block's LayerNorm) that the Reshape's rule tiled over the batch (``[B*nW, ...]``
    statistics): the windows' mixture instead, one window's statistics as before the shifted
    windows kept their classes (tiled, the shifted windows' mask later added to them would be
    pooled into a variance). None when the output is not tiled so."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if x.is_scalar or len(out_shape) < 2 or np.shape(x.mean)[:1] not in ((), (1,)) \
            or exact_somewhere(x):
        return None
    j = merged_prefix(in_shape, out_shape)
    if j is None or j < 3:  # windows of a map: two window axes (not heads merged with it)
        return None
    mean, var = full_grid(out, len(out_shape))
    if mean.shape[0] == 1 or mean.shape[0] != out_shape[0]:
        return None
    m = mean.mean(axis=0, keepdims=True)
    v = (var + mean ** 2).mean(axis=0, keepdims=True) - m ** 2
    return Moments(m, np.maximum(v, 0.0), tokens=out.tokens)


def unique_rows(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, axis=0, return_index=True, return_inverse=True)[1:]`` for a float
    matrix of few rows and many columns (a window's statistics per row): the first index of
    each distinct row, the rows sorted lexicographically as numpy does, and each row's
    position in that order. numpy converts the rows to a structured type of one field per
    column first, which took 0.1-0.5 s for Swin's 4 x 57,624 keys; rows are grouped by their
    bytes here (``+ 0.0`` makes -0.0 and 0.0 one value, as float comparison does) and only the
    distinct rows are sorted, on the columns where they differ."""
    key = np.ascontiguousarray(np.asarray(key, np.float64) + 0.0)
    groups: dict[bytes, int] = {}
    occurrence = np.empty(len(key), np.int64)
    for i, row in enumerate(key):
        occurrence[i] = groups.setdefault(row.tobytes(), len(groups))
    first = np.unique(occurrence, return_index=True)[1]  # each group's first row, in group order
    distinct = key[first]
    varying = distinct[:, np.any(distinct != distinct[:1], axis=0)]
    order = np.lexsort(varying.T[::-1]) if varying.shape[1] else np.arange(len(first))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return first[order], rank[occurrence]

