"""Back onto the feature map: the output of a layout op whose axes are (batch, channels,
positions...) again gets the correlation floor its input's position share implies
(:mod:`.position_share`, whose module docstring has the model): every pair of distinct
positions ``r = (phi - 1/K) / (1 - 1/K)``. The local correlation within a window is not kept,
only what a global mean reads."""

from __future__ import annotations

import numpy as np

from .. import correlation as corr_model
from ..moments import Moments, Source
from ..spatial import attach
from ..strict import fall_back
from .axis_roles import layout_roles
from .context import RuleContext
from .grids import KEEP_CAP
from .position_share import LAYOUT_OPS, map_entry, share
from .tokens_map import map_correlation



def onto_map(ctx: RuleContext, out: Moments) -> Moments:
    """``out``, the output of the layout op of ``ctx``, with a correlation floor when its axes
    are (batch, channels, positions...) again and its input's field is known (module
    docstring); unchanged otherwise."""
    shape = ctx.out_shape(0)
    if out is None or out.spatial is not None or shape is None or len(shape) < 3:
        return out
    graph = ctx.graph
    readers = [graph.node(n).op_type for n, _ in graph.consumers.get(ctx.node.output[0], [])]
    if readers and all(op in LAYOUT_OPS for op in readers):  # not the map yet: the field carries it
        return out
    try:
        node = ctx.node
        if ctx.known is None or node.input[0] not in ctx.known:
            return out
        if map_entry(ctx.known[node.input[0]], tuple(ctx.in_shape(0))) is not None:
            return out  # a feature map's own reshape: its correlation is its own
        folded = map_correlation(ctx, tuple(int(d) for d in shape))
        if folded is not None:  # a sequence's token field folded back: its correlation
            return _with_correlation(out, tuple(int(d) for d in shape), folded)
        field = share(ctx, node.input[0])
        if field is None:
            return out
        placed = layout_roles(ctx, node.op_type, field, tuple(ctx.in_shape(0)), tuple(shape))
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        fall_back(exc)
        return out
    if placed is None:
        return out
    roles, phi = placed
    if (roles[0] != "b" or roles[1] not in ("c", "1")
            or not all(r in ("p", "1") for r in roles[2:])):
        return out
    k = int(np.prod(shape[2:]))
    if k <= 1:
        return out
    c = int(shape[1])
    floor = min(max((phi - 1.0 / k) / (1.0 - 1.0 / k), 0.0), 1.0)
    sizes = [int(s) for s in shape[2:]]
    rho = corr_model.independent(c, sizes).rho
    rho = np.where(rho == 1.0, 1.0, floor)  # every pair of distinct positions alike
    return _with_correlation(out, tuple(int(d) for d in shape),
                             corr_model.Correlation(rho, np.full(c, floor)),
                             _positions_kept(graph, ctx.node.output[0], tuple(sizes)))


def _positions_kept(graph, tensor: str, sizes: tuple[int, ...]) -> bool:
    """Whether the layout ops before ``tensor`` (back to the first other op) kept the
    position axes ``sizes`` as the trailing axes of every tensor, a Transpose never moving
    them: ShuffleNet's channel shuffle ``[N, C, H, W] -> [N, g, C/g, H, W]``, transposed over
    its groups, reshaped back. Row-major, each position's index is then the same inner digit
    throughout, so its statistics stay its own."""
    n = len(sizes)
    for _ in range(64):
        shape = graph.shape(tensor)
        if shape is None or len(shape) < n + 2 or tuple(shape[-n:]) != sizes:
            return False
        node_id = graph.producer.get(tensor)
        if node_id is None:
            return True
        node = graph.node(node_id)
        if node.op_type not in LAYOUT_OPS or not node.input:
            return True
        if node.op_type == "Transpose":
            rank = len(shape)
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"),
                        list(range(rank))[::-1])
            if perm[-n:] != list(range(rank - n, rank)):
                return False
        elif node.op_type not in ("Reshape", "Identity", "Dropout", "Cast"):
            return False
        tensor = node.input[0]
    return False


def _with_correlation(out: Moments, shape: tuple[int, ...], field_corr,
                      kept: bool = False) -> Moments:
    """``out`` (a map ``shape``) with the correlation ``field_corr``, one position class (or
    one per position of a sequence put back as a map; ``kept``: the layout ops moved no
    position, :func:`_positions_kept`, and ``out`` keeps its classes, :func:`_few_classes`)."""
    c, sizes = int(shape[1]), [int(s) for s in shape[2:]]
    sequence = _sequence_cells(out, shape)
    if sequence is not None:
        return attach(sequence[0], sequence[1], field_corr)
    few = _few_classes(out, shape) if kept else None
    if few is not None:  # a Conv's border taps, through a channel shuffle
        return attach(few[0], few[1], field_corr)
    # positions moved (a window partition) or per-position means (a relative-position bias):
    # pooled into the channel's variance;
    # position classes on the whole map would make every later rule per class (5x the
    # analysis time on MaxViT), and the BatchNorm that reads the map pools them anyway
    try:
        mean, var = (np.broadcast_to(a, (c,)) for a in
                     out.expand_rank(len(shape)).values_along(1, c))
    except ValueError:
        return out
    cell = (1, c) + (1,) * len(sizes)
    maps = [np.zeros(s, dtype=np.int64) for s in sizes]
    return attach(Moments(mean.reshape(cell), var.reshape(cell), _source_at(out, cell)),
                  maps, field_corr)


def _few_classes(out: Moments, shape: tuple[int, ...]):
    """(cells, maps) of a map put back whose statistics vary per position: along each spatial
    axis, positions whose (mean, var) slices
    (and those of the law they came from, a ReLU's Gaussian) are equal to 9 digits share a
    class (``np.unique``; the class keeps its first position's statistics), so a padded Conv's border rows and columns (3 per axis after a 3x3 Conv:
    first, inner, last) keep their own statistics, as they had before the layout ops, and the
    map's total ``Var_c = sum_k w_k Var_ck + sum_k w_k (E_ck - E_c)^2`` is unchanged. None when
    the statistics are per channel."""
    rank = len(shape)
    full = out.expand_rank(rank)
    if np.ndim(full.mean) != rank or np.ndim(full.var) != rank:
        return None
    mean, var = np.broadcast_arrays(full.mean, full.var)
    if mean.shape[0] != 1 or mean.shape[2:] == (1,) * (rank - 2) or any(
            m not in (1, s) for m, s in zip(mean.shape[2:], shape[2:])):
        return None
    src = _source_at(out, mean.shape)
    arrays = [mean, var] + ([] if src is None else [_fitting(src.mean, mean.shape),
                                                    _fitting(src.var, mean.shape)])
    maps = []
    for axis, size in enumerate(shape[2:], start=2):
        if mean.shape[axis] == 1:
            maps.append(np.zeros(size, dtype=np.int64))
            continue
        now = np.broadcast_shapes(*(a.shape for a in arrays))
        rows = np.concatenate([np.moveaxis(np.broadcast_to(a, now), axis, 0).reshape(size, -1)
                               for a in arrays], axis=1)
        scale = np.maximum(np.abs(rows).max(axis=0), 1e-300)  # equal up to rounding
        _, first, inverse = np.unique(np.round(rows / scale, 9), axis=0, return_index=True,
                                      return_inverse=True)
        order = np.argsort(first)  # classes numbered in order of first position
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(order.size)
        maps.append(rank_of[inverse.reshape(-1)].astype(np.int64))
        arrays = [a if a.shape[axis] == 1 else np.take(a, first[order], axis=axis)
                  for a in arrays]
    law = None if src is None else Source(arrays[2], arrays[3], src.chain)
    return Moments(arrays[0], arrays[1], law), maps


def _sequence_cells(out: Moments, shape: tuple[int, ...]):
    """(cells, maps) for a sequence put back as a map (``[N, C, S, 1]``: tf2onnx's
    MaxPooling1D after a Conv1D) whose statistics vary along its one position axis (a padded
    Conv1D's border taps, kept per position: ``shape.sequence_positions``): one class per
    position, with its law; None otherwise."""
    axes = [a for a in range(2, len(shape)) if shape[a] > 1]
    full = out.expand_rank(len(shape))
    mean, var = np.broadcast_arrays(full.mean, full.var)
    if (len(axes) != 1 or mean.ndim != len(shape) or mean.shape[axes[0]] != shape[axes[0]]
            or mean.size > KEEP_CAP or any(mean.shape[a] != 1 for a in range(2, len(shape))
                                           if a != axes[0])):
        return None
    maps = [np.arange(s) if a == axes[0] else np.zeros(s, dtype=np.int64)
            for a, s in enumerate(shape[2:], start=2)]
    return Moments(mean, var, _source_at(out, mean.shape)), maps


def _fitting(a, target: tuple[int, ...]) -> np.ndarray | None:
    """``a`` at rank ``len(target)`` when it broadcasts to ``target`` unchanged, else None."""
    a = np.asarray(a)
    a = a.reshape((1,) * (len(target) - a.ndim) + a.shape) if a.ndim < len(target) else a
    try:
        return a if np.broadcast_shapes(a.shape, target) == tuple(target) else None
    except ValueError:
        return None


def _source_at(out: Moments, target: tuple[int, ...]):
    """``out``'s law (a ReLU's rectified Gaussian) at the cells ``target`` when it and the
    statistics vary no further than they do, so that the map put back keeps it (a max pool
    reads it); None otherwise."""
    src = out.source
    if src is None or any(_fitting(a, target) is None for a in (out.mean, out.var)):
        return None
    mean, var = _fitting(src.mean, target), _fitting(src.var, target)
    return None if mean is None or var is None else Source(mean, var, src.chain)


__all__ = ["onto_map"]
