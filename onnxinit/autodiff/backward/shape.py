"""Data movement: reshapes, transposes, splitting, slicing, gathering, broadcasting and
padding; identity and casts (Concat is with the arithmetic family, as its forward rule)."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError
from .registry import backward


@backward("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx, grads):
    """Y = reshape(X):  dX = reshape(dY, shape of X)."""
    return [ctx.reshape_like(grads[0], ctx.node.input[0])] + [None] * (len(ctx.node.input) - 1)


@backward("Transpose")
def transpose(ctx, grads):
    """Y = transpose(X, perm):  dX = transpose(dY, inverse(perm))."""
    perm = ctx.attr("perm", None)
    if perm is None:
        perm = list(range(ctx.rank(ctx.node.input[0])))[::-1]
    return [ctx.emit("Transpose", [grads[0]], perm=np.argsort(perm).tolist())]


@backward("Split")
def split(ctx, grads):
    """(Y_1..Y_n) = split(X, axis):  dX = concat(dY_1..dY_n), zeros for unused outputs."""
    axis = ctx.attr("axis", 0)
    x = ctx.node.input[0]
    parts = [
        g if g is not None else ctx.zeros(ctx.shape(y), like=x)
        for g, y in zip(grads, ctx.node.output)
    ]
    return [ctx.emit("Concat", parts, axis=axis)] + [None] * (len(ctx.node.input) - 1)


def scatter_along_axis(ctx, g, g_shape, axis, indices, full_size, like, accumulate):
    """Place ``g`` (of ``g_shape``) at positions ``indices`` (1-D, int64) along ``axis`` of a
    zero tensor whose ``axis`` has ``full_size`` entries; ``accumulate`` adds repeated indices."""
    rank = len(g_shape)
    target = list(g_shape)
    target[axis] = full_size
    column = [1] * rank
    column[axis] = g_shape[axis]
    spread = ctx.emit("Expand", [ctx.emit("Reshape", [indices, ctx.ints(column)]),
                                 ctx.ints(g_shape)])
    attrs = {"reduction": "add"} if accumulate else {}
    return ctx.emit("ScatterElements", [ctx.zeros(target, like=like), spread, g], axis=axis,
                    **attrs)


def _slice_ranges(ctx, shape):
    starts = ctx.required_value(ctx.input(1), "starts").tolist()
    ends = ctx.required_value(ctx.input(2), "ends").tolist()
    axes = ctx.required_value(ctx.input(3), "axes").tolist() if ctx.input(3) else list(
        range(len(starts)))
    steps = ctx.required_value(ctx.input(4), "steps").tolist() if ctx.input(4) else [1] * len(
        starts)
    ranges = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= len(shape)
        ranges[axis] = range(*slice(start, end, step).indices(shape[axis]))
    return ranges


@backward("Slice")
def slice_(ctx, grads):
    """Y = X[ranges]:  dX = zeros with dY placed at the sliced positions (Pad for unit steps,
    ScatterElements along each axis with another step)."""
    x = ctx.node.input[0]
    shape = ctx.shape(x)
    ranges = _slice_ranges(ctx, shape)
    g = grads[0]
    g_shape = list(ctx.shape(ctx.node.output[0]))
    for axis, positions in ranges.items():
        if positions.step != 1 and len(positions) > 0:
            index = ctx.ints(list(positions))
            g = scatter_along_axis(ctx, g, g_shape, axis, index, shape[axis], x, False)
            g_shape[axis] = shape[axis]
    begin, end = [0] * len(shape), [0] * len(shape)
    for axis, positions in ranges.items():
        if positions.step == 1 or len(positions) == 0:
            first = positions.start if len(positions) else 0
            begin[axis] = first
            end[axis] = shape[axis] - first - len(positions)
    if any(begin) or any(end):
        g = ctx.emit("Pad", [g, ctx.ints(begin + end)], mode="constant")
    return [g] + [None] * (len(ctx.node.input) - 1)


@backward("Gather")
def gather(ctx, grads):
    """Y = take(X, I, axis):  dX = scatter_add(zeros, I, dY) along axis (repeated indices,
    such as tied or repeated embedding rows, accumulate)."""
    data, indices = ctx.node.input
    shape = ctx.shape(data)
    axis = ctx.attr("axis", 0) % len(shape)
    index_count = int(np.prod(ctx.shape(indices)))
    constant = ctx.value(indices)
    if constant is not None:
        flat = ctx.ints((constant.reshape(-1) % shape[axis]).tolist())
    else:
        raw = ctx.emit("Cast", [ctx.emit("Reshape", [indices, ctx.ints([-1])])], to=7)
        negative = ctx.emit("Less", [raw, ctx.ints([0])])
        flat = ctx.emit("Where", [negative, ctx.emit("Add", [raw, ctx.ints([shape[axis]])]), raw])
    g_shape = list(shape[:axis]) + [index_count] + list(shape[axis + 1:])
    g = ctx.emit("Reshape", [grads[0], ctx.ints(g_shape)])
    return [scatter_along_axis(ctx, g, g_shape, axis, flat, shape[axis], data, True), None]


@backward("GatherElements")
def gather_elements(ctx, grads):
    """Y[p] = X[p with p[axis] := I[p]]:  dX = scatter_add(zeros, I, dY) along axis."""
    data, indices = ctx.node.input
    shape = ctx.shape(data)
    axis = ctx.attr("axis", 0) % len(shape)
    dx = ctx.emit("ScatterElements", [ctx.zeros(shape, like=data), indices, grads[0]], axis=axis,
                  reduction="add")
    return [dx, None]


@backward("Expand")
def expand(ctx, grads):
    """Y = broadcast(X, shape):  dX = dY summed over the broadcast axes."""
    x = ctx.node.input[0]
    return [ctx.unbroadcast(grads[0], ctx.shape(ctx.node.output[0]), x), None]


@backward("Tile")
def tile(ctx, grads):
    """Y = tile(X, repeats):  dX = dY reshaped to (r_0, d_0, r_1, d_1, ...) summed over r_i."""
    x = ctx.node.input[0]
    shape = ctx.shape(x)
    repeats = ctx.required_value(ctx.input(1), "repeats").tolist()
    split = [v for r, d in zip(repeats, shape) for v in (r, d)]
    folded = ctx.emit("Reshape", [grads[0], ctx.ints(split)])
    summed = ctx.emit("ReduceSum", [folded, ctx.ints(list(range(0, 2 * len(shape), 2)))],
                      keepdims=0)
    return [summed, None]


@backward("Pad")
def pad(ctx, grads):
    """Y = pad(X, pads) with a constant:  dX = the slice of dY where X sits."""
    if ctx.attr("mode", "constant") != "constant":
        raise UnsupportedModelError(f"{ctx.describe()}: only mode='constant' is differentiable "
                                    "here")
    x = ctx.node.input[0]
    shape = ctx.shape(x)
    rank = len(shape)
    pads = ctx.required_value(ctx.input(1), "pads").tolist()
    axes = ctx.required_value(ctx.input(3), "axes").tolist() if ctx.input(3) else list(range(rank))
    begin = [0] * rank
    for axis, before in zip(axes, pads[: len(axes)]):
        begin[axis % rank] = before
    if min(pads) < 0:
        raise UnsupportedModelError(f"{ctx.describe()}: negative pads are not supported")
    dx = ctx.emit("Slice", [grads[0], ctx.ints(begin), ctx.ints([b + d for b, d in zip(begin,
                                                                                     shape)])])
    return [dx] + [None] * (len(ctx.node.input) - 1)


@backward("Identity")
def identity(ctx, grads):
    """Y = X:  dX = dY."""
    return [grads[0]]


@backward("Cast")
def cast(ctx, grads):
    """Y = cast(X):  dX = cast(dY) back to X's float type."""
    return [ctx.emit("Cast", [grads[0]], to=ctx.elem_type(ctx.node.input[0]))]


@backward("CastLike")
def cast_like(ctx, grads):
    """Y = cast_like(X, T):  dX = cast_like(dY, X); T carries only a type."""
    return [ctx.emit("CastLike", [grads[0], ctx.node.input[0]]), None]


@backward("SpaceToDepth")
def space_to_depth(ctx, grads):
    """Y = space_to_depth(X, b) (channel (i b + j) C + c holds X[c, h b + i, w b + j]): a
    permutation of the elements, undone by dX = depth_to_space(dY, b) in DCR order."""
    return [ctx.emit("DepthToSpace", [grads[0]], blocksize=ctx.attr("blocksize"), mode="DCR")]


@backward("DepthToSpace")
def depth_to_space(ctx, grads):
    """Y = depth_to_space(X, b): dX = space_to_depth(dY, b) in DCR mode; in CRD mode (input
    channel c b^2 + i b + j to Y[c, h b + i, w b + j]) dY reshaped to (N, C, H, b, W, b),
    its block axes moved after the channel, and reshaped to X's shape."""
    b = ctx.attr("blocksize")
    if ctx.attr("mode", "DCR") == "DCR":
        return [ctx.emit("SpaceToDepth", [grads[0]], blocksize=b)]
    n, c, h, w = ctx.shape(ctx.node.input[0])
    blocks = ctx.emit("Reshape", [grads[0], ctx.ints([n, c // (b * b), h, b, w, b])])
    moved = ctx.emit("Transpose", [blocks], perm=[0, 1, 3, 5, 2, 4])
    return [ctx.emit("Reshape", [moved, ctx.ints([n, c, h, w])])]
