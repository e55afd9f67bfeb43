"""A GroupNorm's statistics written out: the mean, and the mean square of centred values, of a
Conv's map over a group of its channels and every position.

tf2onnx writes Keras' GroupNormalization as ``Transpose`` to channels-last, ``Reshape`` to
``[N, H, W, G, C/G]`` and ``ReduceMean`` over ``[1, 2, 4]`` of x and of ``(x - mean)^2``; a
PyTorch model that computes its own group statistics reduces ``x.view(N, G, -1)`` over axis 2.
The reduce rule takes the ``K = |g| P`` values of group g (``|g|`` channels, P positions) as
independent. They are not: two values of a Conv's output ``z`` correlate across channels and
offsets, ``R[j, k, d] = Corr(z_j(p), z_k(p + d))`` (the field of :mod:`.map_means`, which does
the same for a mean over every channel). Which channels and positions each reduced value reads
is found by carrying the flat index of z through the layout ops between z and the reduction
(Transpose, Reshape, Squeeze, Unsqueeze, Identity; the batch axis kept first; none where the
reduction takes the channels-first map itself over its channel axis and more: Keras'
LayerNormalization(axis=[1, 2, 3]), whose mean tf2onnx passes through a same-shape Reshape);
each reduced value must read one group g of channels at every position, once. Per group, with
``y = f(z)`` (``f`` the identity for the mean, ``f_j(z) = (z - E[m_g])^2`` for the mean square
of centred values: the group mean at its expectation) and Mehler's formula per pair of
channels::

    Var(sum_g y) = sum_d n(d) sum_{j,k in g} Cov(f_j, f_k)(R[j, k, d]),  n(d) = prod_a (S_a - |d_a|)

over the interior's own terms ``P sum_{j in g} Var f_j``, which scales those own terms summed
over z's position classes (a zero-padded Conv's border positions); the statistic's variance is
that over ``K^2``. On a 3x3 Conv of an image (3 -> 32 channels, 32x32, groups of 4) the group
means' variances spread 0.5-3x the independent ``nu / K`` (the kernels' tap sums), and the
centred mean squares' are 2x it (the squared correlations of neighbouring outputs).
None where the reduction is not of this form, z is no Conv's output with a field
(:func:`.map_means.conv_field`, unfitted: not through a normalisation), or the index map would
be large. A field carried through a GroupNorm (:mod:`.normalised_maps`) is right pair by pair
but lacks what the normalisation removed from each sample (its groups' means are 0 and their
energies fixed: ``O(1/K)`` per pair, ``O(1)`` summed over all pairs): with it the next Conv's
group statistics read 1.4-3x their variance over the samples (Keras' second and third
GroupNorm), so they are left to the independent values' ``nu / K`` there; their expectations,
whose spread over the groups the pooled statistic holds, come from the Conv's per-channel
variances (:mod:`.group_conv_variance`).
"""

from __future__ import annotations

import numpy as np

from ..spatial import class_weights, positions
from ..strict import fall_back
from .context import RuleContext, RuleError
from .correlated_means import coefficients, covariance_sum
from .map_means import DEPTH, conv_field
from .normalised_maps import sample_indices
from .pool_windows import cell_arrays
from .reduce_axes import reduced_axes

_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity")
MAX_INDICES = 4_000_000  # elements of one sample's map above which the groups are not mapped


def _layout_chain(ctx: RuleContext, t: str) -> tuple[str, list]:
    """(z, [layout nodes from z to t]): back through layout ops to the first other tensor."""
    nodes = []
    for _ in range(16):
        node_id = ctx.graph.producer.get(t)
        if node_id is None:
            break
        node = ctx.graph.node(node_id)
        if node.op_type not in _LAYOUT:
            break
        nodes.append(node)
        t = node.input[0]
    return t, nodes[::-1]


def _statistic(ctx: RuleContext, axes: tuple[int, ...]) -> tuple[str, str | None] | None:
    """(x, m): the node reduces x itself (m None) or ``(x - m)^2`` with m the mean of x over the
    same axes (``Mul(d, d)`` or ``Pow(d, 2)``, ``d = Sub(x, m)``)."""
    graph = ctx.graph
    t = ctx.node.input[0]
    node_id = graph.producer.get(t)
    node = graph.node(node_id) if node_id is not None else None
    if node is None:
        return None
    square = node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]
    if node.op_type == "Pow" and len(node.input) == 2:
        p = graph.value(node.input[1])
        square = p is not None and np.size(p) == 1 and float(np.ravel(p)[0]) == 2.0
    if not square:
        return t, None
    d_id = graph.producer.get(node.input[0])
    d = graph.node(d_id) if d_id is not None else None
    if d is None or d.op_type != "Sub" or len(d.input) != 2:
        return None
    x, m = d.input
    m_id = _through_same_shape(graph, m)
    mnode = graph.node(m_id) if m_id is not None else None
    if mnode is None or mnode.op_type != "ReduceMean" or mnode.input[0] != x:
        return None
    sub = ctx.for_node(m_id)
    shape = graph.shape(x)
    try:
        same = bool(shape) and reduced_axes(sub, len(shape)) == tuple(axes)
    except RuleError:
        return None
    if not same or not sub.attr("keepdims", 1) or m not in ctx.known:
        return None
    return x, m


def _through_same_shape(graph, m: str):
    """The producer of m, back through layout ops that keep its shape (tf2onnx's ``Reshape`` of
    a keepdims mean to ``[-1, 1, 1, 1]``: the same values in the same layout)."""
    node_id = graph.producer.get(m)
    for _ in range(4):
        node = graph.node(node_id) if node_id is not None else None
        if (node is None or node.op_type not in _LAYOUT
                or graph.shape(node.input[0]) != graph.shape(m)):
            return node_id
        node_id = graph.producer.get(node.input[0])
    return node_id


def group_cells(ctx: RuleContext, z: str, nodes: list, axes: tuple[int, ...]):
    """(cells ``[kept cells]`` of group ids, groups ``[[channels]]``, kept shape): the group of
    channels each reduced value of the last node's output reads, one sample's; None where a
    value does not read its channels at every position exactly once, or the layout moves the
    batch axis."""
    shape_z = ctx.graph.shape(z)
    if not shape_z or len(shape_z) < 3 or int(np.prod(shape_z[1:])) > MAX_INDICES:
        return None
    p = int(np.prod(shape_z[2:]))
    idx = sample_indices(ctx.graph, z, nodes)
    if idx is None:
        return None
    rank = idx.ndim
    if 0 in axes:
        return None
    kept = [a for a in range(rank) if a not in axes]
    k = int(np.prod([idx.shape[a] for a in axes]))
    flat = np.transpose(idx, kept + list(axes)).reshape(-1, k)
    channels = np.sort(flat // p, axis=1)
    if k % p:
        return None
    size = k // p
    members = channels[:, ::p]  # each channel's first occurrence, if each reads P positions
    if not np.array_equal(channels, np.repeat(members, p, axis=1)):
        return None
    if size > 1 and np.any(np.diff(members, axis=1) == 0):
        return None
    # the flat indices are distinct: a channel read P times is read at every position once
    groups, cells = np.unique(members, axis=0, return_inverse=True)
    kept_shape = tuple(idx.shape[a] if a in kept else 1 for a in range(rank))
    return np.asarray(cells).reshape(-1), groups, kept_shape


def _counts(radius, shape_sp) -> np.ndarray:
    """``n(d)``: the pairs of positions at each offset."""
    counts = np.ones([2 * r + 1 for r in radius])
    for a, (r, s) in enumerate(zip(radius, shape_sp)):
        along = np.maximum(s - np.abs(np.arange(-r, r + 1)), 0).astype(np.float64)
        counts = counts * along.reshape([-1 if b == a else 1 for b in range(len(radius))])
    return counts


def _own_by_channel(ctx: RuleContext, z: str, shape_z, fns) -> np.ndarray | None:
    """``sum_p Var f_j(z_j(p))`` per channel over z's position classes."""
    sp = positions(ctx.known[z], shape_z)
    if sp is None:
        return None
    mu, nu = cell_arrays(sp, shape_z[1])
    weights = class_weights(sp.maps)
    total = np.zeros(shape_z[1])
    for cell in np.ndindex(*weights.shape):
        found = coefficients(fns, np.ascontiguousarray(mu[(slice(None),) + cell]),
                             np.ascontiguousarray(nu[(slice(None),) + cell]), 1, 2)
        if found is None:
            return None
        total += weights[cell] * ((found[0][1:] ** 2).sum(axis=0) + found[1])
    return total * float(np.prod(shape_z[2:]))


def group_statistic_variance(ctx: RuleContext, axes: tuple[int, ...]) -> np.ndarray | None:
    """The variance of the node's mean over each group (module docstring), laid out as its
    output with the axes kept and the batch axis 1; None where it does not apply."""
    try:
        return _variance(ctx, axes)
    except (RuleError, ValueError, TypeError, IndexError) as exc:
        fall_back(exc, (RuleError,))
        return None


def _variance(ctx: RuleContext, axes: tuple[int, ...]) -> np.ndarray | None:
    found = _statistic(ctx, axes)
    if found is None:
        return None
    x, m = found
    z, nodes = _layout_chain(ctx, x)
    if z not in ctx.known or not (nodes or 1 in axes):
        return None
    mapped = group_cells(ctx, z, nodes, axes)
    if mapped is None:
        return None
    cells, groups, kept_shape = mapped
    if groups.shape[1] == ctx.graph.shape(z)[1] and len(groups) == 1 and m is None:
        return None  # every channel: map_means' case
    gauss = conv_field(ctx, z, DEPTH)
    if gauss is None:
        return None
    corr, var, mean = gauss
    shape_z = ctx.graph.shape(z)
    c = int(shape_z[1])
    shift = np.zeros(c)
    if m is not None:  # each group's own mean, at its expectation
        m_mean = np.broadcast_to(np.asarray(ctx.known[m].mean, dtype=np.float64),
                                 np.broadcast_shapes(np.shape(ctx.known[m].mean), kept_shape))
        m_cells = np.ascontiguousarray(m_mean).reshape(-1) if m_mean.size == cells.size else None
        if m_cells is None:
            return None
        for g, chans in enumerate(groups):
            shift[chans] = float(np.mean(m_cells[cells == g]))
    fns = [] if m is None else [lambda v, s=shift: (v - s) ** 2]
    coeffs = coefficients(fns, mean, var, 1, 2)
    spread = _own_by_channel(ctx, z, shape_z, fns)
    if coeffs is None or spread is None:
        return None
    co, rem = coeffs
    radius = [(n - 1) // 2 for n in corr.shape[2:]]
    counts = _counts(radius, shape_z[2:])
    own = ((co[1:] ** 2).sum(axis=0) + rem) * float(np.prod(shape_z[2:]))
    out = np.empty(len(groups))
    for g, chans in enumerate(groups):
        sub = corr[np.ix_(chans, chans)]
        total = float((covariance_sum(co[:, chans], rem[chans], sub).sum(axis=(0, 1))
                       * counts).sum())
        own_g = float(own[chans].sum())
        if not (own_g > 0 and np.isfinite(total)):
            return None
        k = len(chans) * float(np.prod(shape_z[2:]))
        out[g] = max(total, 0.0) / own_g * float(spread[chans].sum()) / k**2
    return out[cells].reshape(kept_shape)


__all__ = ["MAX_INDICES", "group_cells", "group_statistic_variance"]
