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
                             corr_model.Correlation(rho, np.full(c, floor)))


def _with_correlation(out: Moments, shape: tuple[int, ...], field_corr) -> Moments:
    """``out`` (a map ``shape``) with the correlation ``field_corr``, one position class (or
    one per position of a sequence put back as a map)."""
    c, sizes = int(shape[1]), [int(s) for s in shape[2:]]
    sequence = _sequence_cells(out, shape)
    if sequence is not None:
        return attach(sequence[0], sequence[1], field_corr)
    # per-position means (a relative-position bias) pooled into the channel's variance:
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
