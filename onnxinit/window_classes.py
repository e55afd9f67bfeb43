"""Window classes: the windows of a padded map merged with the batch, kept apart by class.

Swin's window partition ``[B, nH, nW, ws, ws, C] -> [B*nH*nW, ws*ws, C]`` merges the windows
with the batch. Where the map was zero-padded to a multiple of the window and holds several
windows, the windows differ: the padding is in the last row and column of windows only (a
shifted block rolls it inside), so a token's statistics depend on its window. Statistics laid
out along the merged axis would have to repeat per sample; pooled over the windows, the padded
tokens (exact zeros: zero keys, cosines exactly 0) are mixed into the real ones' variance, which
ReduceL2, unit rows and the softmax then read as noise (Swin V2-T at 224x224: the keys' norms
0.05x).

Instead, such a reshape groups the windows by their statistics (windows of identical statistics
form one class: Swin V2-T at 224 has 4, the interior windows, the right column, the bottom row
and the corner) and each class keeps its own Moments, laid out like the merged tensor with size
1 along the merged axis (:class:`Windows`). Every later node that treats that axis element by
element (:func:`.window_axis.window_axis`: element-wise arithmetic whose other operands are constant along
it, MatMul over other axes, Softmax and reductions over other axes, layout ops that keep it)
runs its rule once per class, with every windowed tensor the rule may read (its inputs, the
fields it asks for by name) swapped for that class's Moments: each class's chain is exactly the
one-window chain of a map that fits one window. Classes of several inputs are refined to their
common classes (the shifted windows' mask after the padding). The tensor's own statistics are
the classes' mixture (law of total variance, each class weighted by its share of the windows):

    E = sum_k w_k E_k,   Var = sum_k w_k (Var_k + E_k^2) - E^2

A reshape that splits the windows back out of the batch (``[B*nW, ...] -> [B, nW, ...]``: the
shifted windows' mask, the window reverse) places each class at its windows, each class's
per-token variances with it (a per-window grid, :func:`spread`). The shifted windows' mask makes
classes too, on unpadded maps as well: the logits merged back after it (``attn.view(B, nW, h,
N, N) + mask``, then a Reshape into the Softmax) are grouped by window and mask, each class with
the variances and field of the logits' own class where the padding had made classes
(:func:`merge`'s ``source``): an edge window's masked regions average fewer values, so P V's
variance differs by window and by region, and the roll back's Slices read their own part.
Classes stay readable until the window reverse (the window-local rules read the logits by
name). Memory is bounded by the number of classes (at most ``MAX_CLASSES``) times one window's
statistics, not by the map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .moments import Moments, Tokens
from .rules.context import RuleContext, RuleError
from .rules.layout import full_grid, reshape_moments
from .rules.masks import feeds_softmax
from .rules.token_field import profile_grid
from .window_axis import window_axis
from .window_merges import (MAX_WINDOW_GRID, exact_somewhere, merged_prefix, pooled_windows,
                            split_before_offsets, unique_rows)

MAX_CLASSES = 16  # classes of windows kept apart (more: the windows are pooled, as before)
_SPLIT = "\0split"  # a side entry of result.windows: classes split out before a mask



@dataclass(frozen=True, eq=False)
class Windows:
    """The windows merged into axis ``axis`` (counted from the end) of a tensor, ``members[w]``
    the class of window ``w`` (the merged index modulo ``len(members)``), ``classes[k]`` its
    statistics laid out at the tensor's rank with size 1 along that axis, ``pairs[k]`` its
    feature pairs (``rules.feature_pairs``) or None."""

    axis: int
    members: np.ndarray
    classes: tuple
    pairs: tuple

    @property
    def weights(self) -> np.ndarray:
        return np.bincount(self.members, minlength=len(self.classes)) / len(self.members)


def mixture(classes, weights) -> Moments:
    """The tensor's statistics over all windows: E = sum_k w_k E_k, Var = sum_k w_k (Var_k +
    E_k^2) - E^2; the first (largest) class's token field."""
    shape = np.broadcast_shapes(*(np.broadcast_shapes(c.mean.shape, c.var.shape)
                                  for c in classes))
    mean = sum(w * np.broadcast_to(c.mean, shape) for c, w in zip(classes, weights))
    second = sum(w * np.broadcast_to(c.var + c.mean ** 2, shape) for c, w in zip(classes, weights))
    return Moments(mean, np.maximum(second - mean ** 2, 0.0), tokens=classes[0].tokens)


# ---------------------------------------------------------------------------------------------
# the merge


def merge(x: Moments, in_shape, out_shape, out: Moments, pairs, masked: bool = False,
          source: Windows | None = None) -> Windows | None:
    """The classes of the windows a Reshape merges with the batch (module docstring), when
    ``x`` holds exact padding or is masked (``masked``: logits merged back after the shifted
    windows' mask, which differs from window to window) and its statistics vary along the
    merged axes; None otherwise. ``out`` is the rule's (pooled) output: its token field goes
    with every class. ``source``: the classes these windows were split out of before the mask
    (:func:`split_before_offsets`); each class then keeps its source class's variances and field (the
    padded keys' logits are constants in some windows only), the mask's means added."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if x.is_scalar or len(out_shape) < 2 or not (masked or exact_somewhere(x)):
        return None
    j = merged_prefix(in_shape, out_shape)
    if j is None:
        return None
    mean, var = full_grid(x, len(in_shape))
    if mean.shape[0] != 1 or all(n == 1 for n in mean.shape[1:j]):
        return None
    windows = math.prod(in_shape[1:j])
    rest = mean.shape[j:]
    if windows * math.prod(rest) > MAX_WINDOW_GRID or windows > 1 << 16:
        return None
    per_window = [np.broadcast_to(a, (1,) + in_shape[1:j] + rest).reshape((windows,) + rest)
                  for a in (mean, var)]
    if source is not None and (len(source.members) != windows
                               or source.axis != -len(out_shape)):
        source = None
    if source is not None:
        key = np.concatenate([source.members[:, None].astype(np.float64),
                              per_window[0].reshape(windows, -1)], axis=1)
    else:
        key = np.concatenate([a.reshape(windows, -1) for a in per_window], axis=1)
    first, members = unique_rows(key)
    if len(first) > MAX_CLASSES or len(first) < 2:
        return None
    order = np.argsort(-np.bincount(members), kind="stable")  # largest class first
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    members = rank[members]
    in_rest, classes, class_pairs = (out_shape[0],) + in_shape[j:], [], []
    field = _correlation(out.tokens)  # each class holds its own per-token variances
    for k in order:
        w = first[k]
        m = Moments(per_window[0][w][None], per_window[1][w][None])
        c = reshape_moments(m, in_rest, out_shape)
        if source is None:
            classes.append(Moments(c.mean, c.var, tokens=field))
            class_pairs.append(pairs)
        else:
            k_src = int(source.members[w])
            s = source.classes[k_src]
            classes.append(Moments(c.mean, s.var, tokens=s.tokens))
            class_pairs.append(source.pairs[k_src])
    return Windows(-len(out_shape), members, tuple(classes), tuple(class_pairs))


# ---------------------------------------------------------------------------------------------
# which nodes act window by window


# ---------------------------------------------------------------------------------------------
# splitting the windows back out


def _correlation(t: Tokens | None) -> Tokens | None:
    """A token field as a correlation (flat diagonal): the per-token variances are then the
    Moments' own, which a spread grid holds per window (``Tokens``)."""
    if t is None:
        return None
    d = np.sqrt(np.maximum(np.diag(t.cov), 1e-300))
    return Tokens(t.axis, t.span, t.cov / np.outer(d, d), t.stride)


def spread(w: Windows, in_shape, out_shape) -> Moments | None:
    """Statistics of a Reshape that splits the merged axis (leading) into the batch and the
    windows (``[B*nW, ...] -> [B, nW, ...]`` or ``[B, nH, nW, ws, ws, C]``): each window's
    class placed at it, the batch untracked; None when the reshape does not do that."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    n = len(w.members)
    if len(in_shape) + w.axis != 0 or in_shape[0] % n or out_shape[0] * n != in_shape[0]:
        return None
    virtual = (in_shape[0] // n, n) + in_shape[1:]
    classes = [profile_grid(c, (1,) + in_shape[1:]) or c for c in w.classes]
    shape = np.broadcast_shapes(*(np.broadcast_shapes(c.mean.shape, c.var.shape)
                                  for c in classes))[1:]
    if n * math.prod(shape) > MAX_WINDOW_GRID:
        return None
    mean = np.stack([np.broadcast_to(c.mean, (1,) + shape)[0] for c in classes])[w.members]
    var = np.stack([np.broadcast_to(c.var, (1,) + shape)[0] for c in classes])[w.members]
    return reshape_moments(Moments(mean[None], var[None]), virtual, out_shape)


# ---------------------------------------------------------------------------------------------
# propagation


def _swapped(result, w_ref: Windows, window: int):
    """Swap every windowed tensor of ``result`` with as many windows as ``w_ref`` for the
    class of ``window``; returns what to put back."""
    saved = []
    n = len(w_ref.members)
    for name, w in result.windows.items():
        if len(w.members) != n or name.endswith(_SPLIT):
            continue
        k = int(w.members[window])
        saved.append((name, result.moments.get(name), result.pairs.get(name)))
        result.moments[name] = w.classes[k]
        if w.pairs[k] is not None:
            result.pairs[name] = w.pairs[k]
        else:
            result.pairs.pop(name, None)
    return saved


def _restore(result, saved) -> None:
    for name, m, pair in saved:
        result.moments[name] = m
        if pair is not None:
            result.pairs[name] = pair
        else:
            result.pairs.pop(name, None)


def propagate_windowed(graph, node_id: str, result, run) -> bool:
    """Propagate a node that reads windowed tensors (module docstring) with ``run`` (the plain
    propagate_node): once per class where the node acts window by window, else once on the
    mixtures, the windows spread back where a Reshape splits them out. False when no input
    is windowed (the caller propagates the node itself)."""
    node = graph.node(node_id)
    wins = [result.windows.get(n) if n else None for n in node.input]
    if not any(w is not None for w in wins):
        return False
    try:
        return _propagate_windowed(graph, node_id, result, run, wins)
    finally:
        _release(graph, node_id, result)


def _release(graph, node_id: str, result) -> None:
    """Mark done the classes of the inputs whose readers have all been propagated; they are
    forgotten when their windows go back on the map (:func:`_forget_done`): until then the
    rules of the window-local stretch read them by name (P V reads the softmax's logits and
    the keys it came from, ``softmax.probability_covariance``, ``value_selection``)."""
    for name in set(n for n in graph.node(node_id).input if n in result.windows):
        left = result.window_readers.setdefault(
            name, {c for c, _ in graph.consumers.get(name, [])})
        left.discard(node_id)


def _forget_done(result, windows: int) -> None:
    """Forget the classes of ``windows`` windows whose readers are all done (the window
    reverse: the window-local stretch is over)."""
    for name, w in list(result.windows.items()):
        if len(w.members) == windows and result.window_readers.get(name) == set():
            result.windows.pop(name)
            result.window_readers.pop(name)


def _propagate_windowed(graph, node_id, result, run, wins) -> bool:
    node = graph.node(node_id)
    ctx = RuleContext(node, node_id, graph, result.settings, known=result.moments)
    try:
        axis = window_axis(ctx, [None if w is None else w.axis for w in wins], result.moments)
    except RuleError:
        axis = None
    sizes = {len(w.members) for w in wins if w is not None}
    if axis is None or len(sizes) != 1:
        run(graph, node_id, result)
        if node.op_type == "Reshape" and wins[0] is not None and node.output[0] in result.moments:
            spread_out = spread(wins[0], ctx.in_shape(0), ctx.out_shape(0))
            if spread_out is not None:
                old = result.moments[node.output[0]]
                result.moments[node.output[0]] = Moments(spread_out.mean, spread_out.var,
                                                         tokens=_correlation(old.tokens))
                result.large_grids.add(node.output[0])
                if feeds_softmax(ctx):  # logits split out for the shifted windows' mask
                    result.windows[node.output[0] + _SPLIT] = wins[0]
                else:
                    _forget_done(result, len(wins[0].members))
        return True
    windowed = [w for w in wins if w is not None]
    key = np.stack([w.members for w in windowed], axis=1)
    _, first, members = np.unique(key, axis=0, return_index=True, return_inverse=True)
    members = members.ravel()
    if len(first) > MAX_CLASSES:
        run(graph, node_id, result)
        return True
    outs = [o for o in node.output if o]
    per_class: dict[str, list] = {o: [] for o in outs}
    pair_class: dict[str, list] = {o: [] for o in outs}
    for window in first:
        saved = _swapped(result, windowed[0], int(window))
        try:
            run(graph, node_id, result)
            for o in outs:
                per_class[o].append(result.moments.get(o))
                pair_class[o].append(result.pairs.get(o))
        finally:
            _restore(result, saved)
    weights = np.bincount(members, minlength=len(first)) / len(members)
    order = np.argsort(-weights, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    for o in outs:
        classes = [per_class[o][k] for k in order]
        if any(c is None for c in classes):
            continue
        result.moments[o] = mixture(classes, weights[order])
        result.windows[o] = Windows(axis, rank[members],
                                    tuple(classes), tuple(pair_class[o][k] for k in order))
    return True


def begin_windows(graph, node_id: str, result) -> None:
    """After a node: its output's window classes when it is a Reshape that merges padded or
    masked windows with the batch (:func:`merge`). A Slice of a grid kept whole (a spread or a
    Pad, ``result.large_grids``) marks its output so too, however small: the roll back's
    Concat of two such pieces then keeps the map's grid instead of pooling an axis of it."""
    node = graph.node(node_id)
    if node.op_type == "Slice" and node.input[0] in result.large_grids:
        result.large_grids.update(o for o in node.output if o in result.moments)
    if node.op_type != "Reshape" or node.output[0] not in result.moments:
        return
    x = result.moments.get(node.input[0])
    in_shape, out_shape = graph.shape(node.input[0]), graph.shape(node.output[0])
    if x is None or in_shape is None or out_shape is None:
        return
    out = result.moments[node.output[0]]
    masked, source = False, None
    if feeds_softmax(RuleContext(node, node_id, graph, result.settings)):
        split = split_before_offsets(graph, node.input[0])
        if split is None:
            return  # other logits merged with the batch: Moments.rows (masks.py)
        masked, source = True, result.windows.pop(split + _SPLIT, None)
    found = merge(x, in_shape, out_shape, out, result.pairs.get(node.output[0]), masked, source)
    if found is not None:
        result.windows[node.output[0]] = found
        result.moments[node.output[0]] = mixture(found.classes, found.weights)
    elif not masked:
        pooled = pooled_windows(x, in_shape, out_shape, out)
        if pooled is not None:
            result.moments[node.output[0]] = pooled
