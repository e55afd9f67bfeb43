"""Backward rules of the layout ops: the gradient is the output gradient moved back to where
the element came from.

- Reshape, Flatten, Squeeze, Unsqueeze: the same elements in another shape. Statistics tracked
  per element of one sample (at most MAX_DENSE of them) are reshaped with the tensor; a
  convolution-layout input gets per-channel statistics and the position profile back from
  them. Otherwise the statistics of the whole tensor.
- Transpose: tracked axes permuted.
- Concat: each input gets its slice of the output gradient (its channels' statistics when the
  gradient tracks the concatenation axis).
- Split, Slice: the input gradient is the outputs' gradients where they came from and zero
  elsewhere (a mixture with the zeros' share).
- Expand: the sum over the broadcast axes (:func:`.arithmetic.reduce_to`).
- SpaceToDepth, DepthToSpace: the elements moved back, per element of one sample.

The token field (:mod:`.tokens`) follows the token axes through all of them (dropped where a
rule selects or splits tokens); the attention pair (:mod:`.pairs`) through a Reshape that keeps
the last two axes and a Transpose of them.
"""

from __future__ import annotations

import numpy as np

from dataclasses import replace

from ..rules.context import RuleError
from ..rules.shape import pad_params, slice_params
from .arithmetic import reduce_to
from .context import GradContext
from .dense_layout import blocks_to_space, from_per_element, per_element, relayout, space_to_blocks
from .gradient import Gradient
from .registry import rule
from .token_moves import placed, taken, transposed_back
from .tokens import axes_of, kept_unless, moved, summed, transposed

@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(grads, ctx: GradContext):
    """See the module docstring."""
    out_shape, in_shape = ctx.out_shape(), ctx.in_shape(0)
    g = relayout(grads[0], out_shape, in_shape)
    same_matrix = len(in_shape) >= 2 and tuple(out_shape[-2:]) == tuple(in_shape[-2:])
    g = replace(g, tokens=moved(grads[0].tokens, out_shape, in_shape),
                pair=grads[0].pair if same_matrix else None, given=None)
    return [g] + [None] * (len(ctx.node.input) - 1)


@rule("Transpose")
def transpose(grads, ctx: GradContext):
    """Tracked axes permuted back."""
    g = grads[0]
    rank = len(ctx.out_shape())
    perm = list(ctx.attr("perm", list(range(rank))[::-1]))
    tokens = transposed(g.tokens, perm, rank) or transposed_back(g.tokens, perm,
                                                                   ctx.out_shape())
    pair = None
    if list(perm[:-2]) == list(range(rank - 2)):
        pair = g.pair if list(perm[-2:]) == [rank - 2, rank - 1] else (
            None if g.pair is None else tuple((c, r) for r, c in g.pair))
    g = g.expand_rank(rank)
    if g.rank != rank:
        return [replace(g.pooled(), tokens=tokens, pair=pair)]
    inverse = np.argsort(perm)
    mean = np.transpose(np.broadcast_to(g.mean, np.broadcast_shapes(g.mean.shape, g.var.shape)),
                        inverse) if g.mean.ndim == rank else g.mean
    var = np.transpose(np.broadcast_to(g.var, np.broadcast_shapes(g.mean.shape, g.var.shape)),
                       inverse) if g.var.ndim == rank else g.var
    return [Gradient(mean, var, tokens=tokens, pair=pair)]


def _slice_along(g: Gradient, axis: int, start: int, stop: int, out_shape) -> Gradient:
    rank, size = len(out_shape), out_shape[axis]
    in_shape = (*out_shape[:axis], stop - start, *out_shape[axis + 1:])
    tokens, share = taken(g.tokens, out_shape, in_shape, {axis: np.arange(start, stop)})
    g = g.expand_rank(rank)
    if g.rank == rank:
        shape = np.broadcast_shapes(g.mean.shape, g.var.shape)
        if shape[axis] == size:
            index = [slice(None)] * rank
            index[axis] = slice(start, stop)
            mean = np.broadcast_to(g.mean, shape)[tuple(index)]
            var = np.broadcast_to(g.var, shape)[tuple(index)]
            sample_var = None
            if g.sample_var is not None and np.shape(g.sample_var) == shape:
                sample_var = g.sample_var[tuple(index)]
            return Gradient(mean, var, sample_var, g.profile, tokens=tokens)
    return replace(g.scaled_second(share), tokens=tokens, pair=None, given=None)


@rule("Concat")
def concat(grads, ctx: GradContext):
    """Each input receives its slice of dy. A Concat of Slices of one tensor along its axis
    that holds each index of it once (``torch.roll``) also sends dy, its indices moved back, to
    that tensor as a whole (``ctx.redirect``; the Slices then send nothing): summed from the
    Slices as independent parts it would lose the token covariance between them."""
    g = grads[0]
    rank = len(ctx.out_shape())
    axis = int(ctx.attr("axis")) % rank
    out, start = [], 0
    for i in range(len(ctx.node.input)):
        size = ctx.in_shape(i)[axis]
        part = _slice_along(g, axis, start, start + size, ctx.out_shape())
        out.append(part if ctx.is_signal(i) else None)
        start += size
    rolled = roll_of(ctx, ctx.node)
    if rolled is not None:
        ctx.redirect[rolled[0]] = _unrolled(g, axis, rolled[1], ctx.out_shape())
    return out


def roll_of(ctx: GradContext, node) -> tuple[str, np.ndarray] | None:
    """``(source, where)`` when Concat ``node``'s inputs are Slices (used once) of one tensor
    along the Concat's axis only, together holding each of its indices once: ``where[i]`` is
    the output index of the source's index i."""
    graph = ctx.graph
    out_shape = graph.shape(node.output[0])
    if out_shape is None:
        return None
    rank = len(out_shape)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % rank
    source, order = None, []
    for name in node.input:
        producer = graph.producer.get(name)
        piece = graph.node(producer) if producer is not None else None
        if piece is None or piece.op_type != "Slice" or len(graph.consumers.get(name, [])) != 1:
            return None
        if source not in (None, piece.input[0]):
            return None
        source = piece.input[0]
        shape, cut = graph.shape(source), graph.shape(name)
        if shape is None or cut is None or len(shape) != rank or any(
                shape[a] != cut[a] for a in range(rank) if a != axis):
            return None
        try:
            params = slice_params(replace(ctx, node=piece, node_id=producer), rank)
        except RuleError:
            return None
        index = np.arange(shape[axis])
        for a, s, e, t in params:
            if a == axis:
                index = index[s:e:t]
        order.append(index)
    order = np.concatenate(order) if order else np.zeros(0, np.int64)
    if source is None or not np.array_equal(np.sort(order), np.arange(out_shape[axis])):
        return None
    where = np.empty_like(order)
    where[order] = np.arange(order.size)
    return source, where


def _unrolled(g: Gradient, axis: int, where: np.ndarray, out_shape) -> Gradient:
    """dy with index ``where[i]`` along ``axis`` put back at i."""
    rank = len(out_shape)
    tokens, _ = taken(g.tokens, out_shape, out_shape, {axis: where})
    g = g.expand_rank(rank)

    def back(a):
        a = np.asarray(a)
        return np.take(a, where, axis=axis) if a.ndim == rank and a.shape[axis] > 1 else a

    return Gradient(back(g.mean), back(g.var), cov=g.cov if axis != rank - 1 else None,
                    tokens=tokens)


def _with_zeros(g: Gradient, share: float) -> Gradient:
    """A gradient that is ``g`` on a ``share`` of the elements and zero elsewhere."""
    m, v = g.total()
    mean = share * m
    return Gradient.scalar(mean, share * (v + m * m) - mean**2)


@rule("Split")
def split(grads, ctx: GradContext):
    """The outputs' gradients side by side (zero for an output no gradient reaches)."""
    rank = len(ctx.in_shape(0))
    axis = int(ctx.attr("axis", 0)) % rank
    size = ctx.in_shape(0)[axis]
    parts = []
    for i, name in enumerate(ctx.node.output):
        share = ctx.out_shape(i)[axis] / size
        if grads[i] is not None:
            m, v = grads[i].total()
            parts.append((share, m, v + m * m))
        else:
            parts.append((share, 0.0, 0.0))
    mean = sum(w * m for w, m, _ in parts)
    second = sum(w * e for w, _, e in parts)
    fields = [(kept_unless(g.tokens, rank, [axis]), w * (e - m * m)) for g, (w, m, e) in
              zip(grads, parts) if g is not None]
    tokens = summed(fields) if all(t is not None for t, _ in fields) else None
    return [Gradient(mean, second - mean**2, tokens=tokens)] + [None] * (len(ctx.node.input) - 1)


def embedding(g: Gradient, ctx: GradContext) -> Gradient:
    """The table's gradient of an embedding Gather: each of the R looked-up positions adds its
    dy to its row; with ids spread uniformly over the V rows, ``E[dE^2] = (R / V) E[dy^2]``
    pooled over the table (positions independent)."""
    table = ctx.in_shape(0)
    rows = int(np.prod(ctx.in_shape(1))) if ctx.has_input(1) else 1
    m, v = g.total()
    return Gradient.scalar(0.0, rows / table[0] * (v + m * m))


@rule("Slice", "Gather")
def slice_(grads, ctx: GradContext):
    """dy where the elements were taken, zero elsewhere (a Gather of a signal: indices taken as
    distinct); the table of an embedding Gather gets :func:`embedding`."""
    if not ctx.is_signal(0):
        if ctx.node.op_type == "Gather" and ctx.is_parameter(0):
            return [embedding(grads[0], ctx)] + [None] * (len(ctx.node.input) - 1)
        raise RuleError("Gather from a constant that is not a parameter")
    if _in_roll(ctx):
        return [None] * len(ctx.node.input)
    out_n = int(np.prod(ctx.out_shape()))
    in_n = int(np.prod(ctx.in_shape(0)))
    share = min(1.0, out_n / in_n)
    out = replace(_with_zeros(grads[0], share), tokens=_selected_tokens(grads[0], ctx))
    return [out] + [None] * (len(ctx.node.input) - 1)


def _in_roll(ctx: GradContext) -> bool:
    """The Slice's output is a piece of a roll (:func:`roll_of`), whose Concat sent the gradient
    to the source already."""
    if ctx.node.op_type != "Slice":
        return False
    uses = ctx.graph.consumers.get(ctx.node.output[0], [])
    if len(uses) != 1:
        return False
    user = ctx.graph.node(uses[0][0])
    return user.op_type == "Concat" and roll_of(ctx, user) is not None


def _selected_tokens(g: Gradient, ctx: GradContext):
    """The token field of a Slice's or Gather's input: unchanged when the selection is on axes
    before the token axes (counted from the end, a Gather's index axes replacing its axis)."""
    in_rank, out_rank = len(ctx.in_shape(0)), len(ctx.out_shape())
    out_axes = axes_of(g.tokens, out_rank)
    if out_axes is None:
        return None
    touched: list[int]
    if ctx.node.op_type == "Gather":
        touched = [int(ctx.attr("axis", 0)) % in_rank]
    else:
        touched = _slice_axes(ctx, in_rank)
    in_axes = axes_of(g.tokens, in_rank)
    if in_axes is None:
        return None
    if ctx.node.op_type == "Gather" and touched[0] >= in_axes[0]:
        return None  # a gathered axis after the tokens changes their place from the end
    if not any(a in in_axes for a in touched):
        return g.tokens
    if ctx.node.op_type == "Gather":
        return None
    try:
        params = slice_params(ctx, in_rank)
    except RuleError:
        return None
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape()
    picks = {a: np.arange(in_shape[a])[s:e:t] for a, s, e, t in params}
    if any(len(p) != out_shape[a] for a, p in picks.items()):
        return None
    return placed(g.tokens, out_shape, in_shape, picks)


def _slice_axes(ctx: GradContext, rank: int) -> list[int]:
    """The axes a Slice changes."""
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape()
    return [a for a in range(rank) if in_shape[a] != out_shape[a]]


@rule("Pad")
def pad(grads, ctx: GradContext):
    """dy at the input's elements. Statistics that vary along a padded axis (full size there:
    a Div that left padded tokens out) are cut to the input's extent; pooled statistics pass
    unchanged (the padded elements' gradient is not told apart from the rest)."""
    g = grads[0]
    rest = [None] * (len(ctx.node.input) - 1)
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape()
    rank = len(in_shape)
    try:
        _, _, pads = pad_params(ctx, rank)
    except RuleError:
        return [g.plain()] + rest
    if any(b < 0 or e < 0 for b, e in pads.values()):
        return [g.plain()] + rest  # a crop, not a pad
    g = g.expand_rank(rank)
    padded = [a for a in range(rank) if out_shape[a] > in_shape[a]]
    tokens, share = taken(g.tokens, out_shape, in_shape,
                          {a: pads[a][0] + np.arange(in_shape[a]) for a in padded})

    def varies(a):
        return np.ndim(a) == rank and any(np.shape(a)[i] == out_shape[i] for i in padded)

    if not (varies(g.mean) or varies(g.var)):
        return [replace(g.scaled_second(share), tokens=tokens, pair=None)] + rest
    if share != 1.0:  # the field spells out each padded place: its profile is the finer one
        return [replace(g.pooled().scaled_second(share), tokens=tokens)] + rest

    def cut(a):
        if np.ndim(a) != rank:
            return a
        return np.asarray(a)[tuple(
            slice(pads[i][0], pads[i][0] + in_shape[i])
            if i in padded and np.shape(a)[i] == out_shape[i] else slice(None)
            for i in range(rank))]

    return [Gradient(cut(g.mean), cut(g.var), tokens=tokens)] + rest


@rule("Expand")
def expand(grads, ctx: GradContext):
    """The sum of dy over the broadcast axes."""
    return [reduce_to(grads[0], ctx.out_shape(), ctx.in_shape(0)), None]


@rule("SpaceToDepth", "DepthToSpace")
def depth_space(grads, ctx: GradContext):
    """Each element moves to another place (channels to b x b blocks or back): dx is dy with
    the inverse move, per element of one sample (its mean and variance, the position profile
    folded in) and back to per-channel statistics with a profile; the statistics of the whole
    tensor where dy tracks more than :data:`.dense_layout.MAX_DENSE` values."""
    g = grads[0]
    out_shape, in_shape = ctx.out_shape(), ctx.in_shape(0)
    dense = per_element(g, out_shape)
    if dense is None:
        return [g.pooled()]
    b = int(ctx.attr("blocksize"))
    if ctx.node.op_type == "SpaceToDepth":
        moved_back = [blocks_to_space(np.ascontiguousarray(a), b, "DCR") for a in dense]
    elif ctx.attr("mode", "DCR") == "DCR":
        moved_back = [space_to_blocks(np.ascontiguousarray(a), b) for a in dense]
    else:  # CRD: the inverse of the CRD move
        n, c, h, w = dense[0].shape
        moved_back = [np.ascontiguousarray(a).reshape(n, c, h // b, b, w // b, b)
                      .transpose(0, 1, 3, 5, 2, 4).reshape(1, *in_shape[1:])
                      for a in dense]
    return [from_per_element(*moved_back, in_shape)]
