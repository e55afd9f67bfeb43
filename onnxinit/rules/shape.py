"""Layout ops: they move, select or repeat elements without mixing them, so the statistics of the
elements are unchanged and only per-axis statistics must follow the element they belong to:

* Reshape, Flatten, Squeeze, Unsqueeze: the per-axis statistics follow the flat (row-major)
  index, exactly where the tracked axes map onto whole output axes, pooled otherwise
  (layout.py: ``[N, C, H, W] -> [N, C*H*W]`` gives feature ``f`` the statistics of channel
  ``f // (H*W)``).
* Transpose permutes them; Slice, Split, Gather (constant indices) select them; Tile repeats
  them; Expand broadcasts; Pad mixes in the pad value by the padded fraction.
* Gather from a constant table by integer ids (an embedding): per column over the table's rows,
  ``E_d = mean_v T[v, d]``, ``Var_d = var_v T[v, d]`` (ids uniform over the vocabulary).

The distribution's description (``source``) is kept only where the layout cannot misalign it:
scalar statistics, ops that do not move axes, and a Reshape or Transpose of a source whose chain
holds no constant laid out at the old shape (``constant_cells.reshaped`` / ``transposed``).
"""

from __future__ import annotations

import numpy as np

from ..dtypes import FLOAT_TYPES
from ..moments import Moments
from ..spatial import dense, drop, select
from ..spatial import pad as pad_classes
from .boolean_steps import boolean_cast
from .constant_cells import reshaped, transposed
from .context import RuleContext, RuleError, signal
from .derived_ids import picked_rows, positional_rows
from .gather_elements import gathered
from .grids import KEEP_CAP
from .layout import (PADDED_CAP, drop_constant_axes, full_grid, positions_spelled, reshape_moments,
                     scalar_of)
from .masks import keep_rows
from .mixture import permuted
from .position_floor import onto_map
from .registry import rule
from .unit_axes import per_position, unit_axes_moved
from .weighted import moments_along


# ---------------------------------------------------------------------------------------------
# Reshape and its special cases


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(inputs, ctx: RuleContext):
    """y = x with another shape (row-major order kept): statistics of element i unchanged;
    per-axis statistics follow the element (exact when the tracked axes map onto whole output
    axes, e.g. Flatten [N,C,H,W] -> [N,C*H*W]: feature f has channel f // (H*W)'s statistics;
    pooled otherwise: E = mean of means, Var = mean of variances + variance of means; into a
    Softmax, the rows of a grid it cannot keep are kept as ``Moments.rows``: masks.keep_rows)."""
    x = signal(inputs, 0)
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    kept = unit_axes_moved(x, in_shape, out_shape)  # no position moves: the map kept
    if kept is not None:
        return [kept]
    if x.spatial is not None:
        x = per_position(x, in_shape)
    out = keep_rows(x, in_shape, out_shape, reshape_moments(x, in_shape, out_shape), ctx)
    return [onto_map(ctx, reshaped(x, out, in_shape, out_shape))]


def sequence_positions(x: Moments, shape) -> Moments:
    """x's position classes as per-position statistics ``[1, C, S]`` when x is a sequence
    ``[N, C, S]`` whose classes differ and that grid has at most ``KEEP_CAP`` cells (a causal
    Conv1d's first positions see fewer taps: Mamba's); x otherwise."""
    sp = x.spatial
    if sp is None or len(shape) != 3 or sp.classes[0] < 2 or int(np.prod(shape[1:])) > KEEP_CAP:
        return x
    return drop_constant_axes(*dense(sp))


@rule("Identity")
def identity(inputs, ctx: RuleContext):
    """y = x: E, Var and the distribution unchanged."""
    return [signal(inputs, 0)]


@rule("Cast", "CastLike")
def cast(inputs, ctx: RuleContext):
    """Cast to a float type: unchanged (rounding ignored); to another type: not a signal. A
    comparison with a constant cast to float is a Bernoulli draw of a uniform draw (stochastic
    depth's keep mask) or a step function of a signal (:func:`.boolean_steps.boolean_cast`)."""
    if ctx.node.op_type == "Cast":
        to = ctx.attr("to")
    else:
        name = ctx.node.input[1]
        to = ctx.graph.dtypes.get(name, 1)
    if inputs[0] is None and to in FLOAT_TYPES:
        drawn = boolean_cast(ctx)
        if drawn is not None:
            return [drawn]
    x = signal(inputs, 0)
    return [x if to in FLOAT_TYPES else None]


@rule("Transpose")
def transpose(inputs, ctx: RuleContext):
    """y = x with axes permuted by ``perm`` (default reversed): per-axis statistics permuted,
    and a Gaussian mixture's components (a ReLU output, a residual sum) with them. A sequence
    ``[N, C, S]`` whose positions differ (a padded Conv1d's border taps) keeps them per
    position: its ``[1, C, S]`` statistics permuted (``sequence_positions``); so does a small
    map's transpose into tokens (``layout.positions_spelled``)."""
    x = signal(inputs, 0)
    rank = len(ctx.in_shape(0))
    x = sequence_positions(x, ctx.in_shape(0))
    if x.is_scalar:
        return [scalar_of(x)]
    perm = list(ctx.attr("perm", list(range(rank))[::-1]))
    x = positions_spelled(x, perm, ctx.in_shape(0))
    mean, var = full_grid(x, rank)
    out = Moments(mean.transpose(perm), var.transpose(perm), None, permuted(x, perm, rank))
    return [onto_map(ctx, transposed(x, out, perm, rank))]


@rule("Expand")
def expand(inputs, ctx: RuleContext):
    """y = x broadcast to a shape: every element a copy, statistics broadcast unchanged."""
    x = signal(inputs, 0)
    if x.spatial is not None and tuple(ctx.out_shape(0)) != tuple(ctx.in_shape(0)):
        x = drop(x)
    return [x.expand_rank(len(ctx.out_shape(0))) if x.rank else x]


@rule("Tile")
def tile(inputs, ctx: RuleContext):
    """y = x repeated ``repeats[a]`` times along each axis a: per-axis statistics tiled."""
    x = signal(inputs, 0)
    if x.is_scalar:
        return [scalar_of(x)]
    repeats = ctx.const(1)
    if repeats is None:
        raise RuleError("repeats is not constant")
    rank = len(ctx.in_shape(0))
    mean, var = full_grid(x, rank)
    reps = [int(r) if mean.shape[a] > 1 else 1 for a, r in enumerate(np.ravel(repeats))]
    return [Moments(np.tile(mean, reps), np.tile(var, reps))]


# ---------------------------------------------------------------------------------------------
# selection: Slice, Split, Gather


def _take(x: Moments, rank: int, axis: int, indices: np.ndarray) -> Moments:
    """Statistics of x.take(indices, axis) (indices already non-negative, any shape)."""
    mean, var = full_grid(x, rank)
    if mean.shape[axis] == 1:
        indices = np.zeros_like(indices)
    m = np.take(mean, indices, axis=axis)
    v = np.take(var, indices, axis=axis)
    return drop_constant_axes(m, v) if m.size > 1 else Moments(m.reshape(()), v.reshape(()))


def slice_params(ctx: RuleContext, rank: int):
    if ctx.opset < 10:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        values = [ctx.const(i) if ctx.has_input(i) else None for i in range(1, 5)]
        if values[0] is None or values[1] is None:
            raise RuleError("starts/ends are not constant")
        if (ctx.has_input(3) and values[2] is None) or (ctx.has_input(4) and values[3] is None):
            raise RuleError("axes/steps are not constant")
        starts, ends = np.ravel(values[0]).tolist(), np.ravel(values[1]).tolist()
        axes = np.ravel(values[2]).tolist() if values[2] is not None else list(range(len(starts)))
        steps = np.ravel(values[3]).tolist() if values[3] is not None else [1] * len(starts)
    return [
        (int(a) % rank, int(s), int(e), int(t)) for a, s, e, t in zip(axes, starts, ends, steps)
    ]


@rule("Slice")
def slice_(inputs, ctx: RuleContext):
    """y = x[starts:ends:steps] along ``axes``: statistics of the selected indices along tracked
    axes; unchanged elsewhere."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    if x.spatial is not None:
        for axis, start, end, step in slice_params(ctx, rank):
            x = select(x, axis, np.arange(in_shape[axis])[slice(start, end, step)])
        return [x]
    if x.is_scalar:
        return [scalar_of(x)]
    out = x.expand_rank(rank)
    for axis, start, end, step in slice_params(ctx, rank):
        if out.rank and np.broadcast_shapes(out.mean.shape, out.var.shape)[axis] > 1:
            idx = np.arange(in_shape[axis])[slice(start, end, step)]
            out = _take(out, rank, axis, idx)
            out = out.expand_rank(rank) if out.rank else out
    return [out]


@rule("Split")
def split(inputs, ctx: RuleContext):
    """Outputs are consecutive pieces of x along ``axis``: each takes its indices' statistics."""
    x = signal(inputs, 0)
    outs_n = len(ctx.node.output)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    axis = ctx.attr("axis", 0) % rank
    sizes = [ctx.out_shape(i)[axis] for i in range(outs_n)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    pieces = [np.arange(offsets[i], offsets[i + 1]) for i in range(outs_n)]
    if x.spatial is not None:
        return [select(x, axis, idx) for idx in pieces]
    if x.is_scalar:
        return [scalar_of(x) for _ in range(outs_n)]
    return [_take(x, rank, axis, idx) for idx in pieces]


@rule("Gather")
def gather(inputs, ctx: RuleContext):
    """Gather of activations by constant indices along ``axis``: the selected statistics (the
    indices' shape replaces the axis). Gather of a constant table T by non-constant integer ids
    (an embedding, ids uniform): per index of the table's other axes, E = mean_v T[v],
    Var = var_v T[v] (population variance over the gathered axis); by ids computed from the
    token ids (position ids), the rows each position draws (derived_ids.py). Activations
    gathered by ids computed from the token ids (a sequence's pooled token): the rows they
    pick (derived_ids.picked_rows)."""
    axis = ctx.attr("axis", 0)
    if inputs[0] is not None:
        indices = ctx.const(1)
        if indices is None:
            picked = picked_rows(ctx, inputs[0], ctx.in_shape(0))
            if picked is not None:
                return [picked]
            raise RuleError("the indices are not constant")
        x = inputs[0]
        in_shape = ctx.in_shape(0)
        rank = len(in_shape)
        axis %= rank
        if x.is_scalar:
            return [scalar_of(x)]
        idx = np.asarray(indices, dtype=np.int64) % in_shape[axis]
        return [_take(x, rank, axis, idx)]
    table = ctx.const(0)
    if table is None:
        raise RuleError("neither the data nor the table is known")
    axis %= table.ndim
    positional = positional_rows(ctx, table, axis)
    if positional is not None:
        return [positional]
    out_rank = len(ctx.out_shape(0))
    mean, var = moments_along(table, axis)
    ids_rank = out_rank - (table.ndim - 1)
    shape = list(table.shape[:axis]) + [1] * ids_rank + list(table.shape[axis + 1 :])
    return [drop_constant_axes(mean.reshape(shape), var.reshape(shape))]


# ---------------------------------------------------------------------------------------------
# Pad


def pad_params(ctx: RuleContext, rank: int):
    """(mode, value, {axis: (begin, end)}) of a Pad, any opset; RuleError when not constant."""
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads = list(ctx.attr("pads"))
        value = float(ctx.attr("value", 0.0))
        axes = list(range(rank))
    else:
        pads = ctx.const(1)
        if pads is None:
            raise RuleError("pads are not constant")
        pads = np.ravel(pads).astype(np.int64).tolist()
        value = 0.0
        if ctx.has_input(2):
            v = ctx.const(2)
            if v is None:
                raise RuleError("the pad value is not constant")
            value = float(np.ravel(v)[0]) if np.size(v) else 0.0
        axes = list(range(rank))
        if ctx.has_input(3):
            a = ctx.const(3)
            if a is None:
                raise RuleError("axes are not constant")
            axes = [int(i) % rank for i in np.ravel(a)]
    k = len(axes)
    return mode, value, {axes[i]: (pads[i], pads[i + k]) for i in range(k)}


PAD_TRACK_CAP = PADDED_CAP  # statistics a constant Pad may spell out along its padded axes


def _track_padded(mean, var, in_shape, pads, rank):
    """Spell out the padded axes that are not tracked (when the grid stays within
    PAD_TRACK_CAP), so that the padding stays where it is: its elements are exactly the pad
    value, which a mixture pooled over the axis loses (a zero-padded window's tokens: zero
    keys and queries, cosines exactly 0, ``rules/padded_rows.py``)."""
    if mean.ndim != rank:
        mean = np.reshape(mean, (1,) * (rank - mean.ndim) + mean.shape)
        var = np.reshape(var, (1,) * (rank - var.ndim) + var.shape)
    spelled = tuple(a for a, (b, e) in sorted(pads.items())
                    if (b > 0 or e > 0) and mean.shape[a] == 1)
    if not spelled:
        return mean, var, ()
    target = [int(in_shape[a]) if a in spelled else n for a, n in enumerate(mean.shape)]
    padded = [n + sum(max(0, p) for p in pads.get(a, (0, 0))) if n > 1 or a in spelled else 1
              for a, n in enumerate(target)]
    if int(np.prod(padded)) > PAD_TRACK_CAP:
        return mean, var, ()
    return np.broadcast_to(mean, target).copy(), np.broadcast_to(var, target).copy(), spelled


@rule("GatherElements")
def gather_elements(inputs, ctx: RuleContext):
    """Constant indices: each element keeps the statistics it copies (gather_elements.py)."""
    return gathered(inputs, ctx)


@rule("Pad")
def pad(inputs, ctx: RuleContext):
    """Constant mode (value v), per index along tracked axes: indices in the padding get
    (E, Var) = (v, 0); along untracked axes a fraction p of the elements is padding:
    E = (1-p) mu + p v, Var = (1-p)(nu + mu^2) + p v^2 - E^2. Reflect/edge/wrap: tracked axes
    padded with the statistics of the copied indices, untracked axes unchanged. Negative pads
    crop. A feature map's position classes (``onnxinit.spatial``) are padded with a class of
    the constant when only spatial axes are padded (an explicit ZeroPadding2D before a conv,
    as tf2onnx writes Keras' strided depthwise convs)."""
    x = signal(inputs, 0)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    mode, value, pads = pad_params(ctx, rank)
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise RuleError(f"pad mode {mode}")
    if not any(p != (0, 0) for p in pads.values()):
        return [x]  # nothing padded (Swin pads its map to a multiple of the window: 0 here)
    # position classes need convolution layout: statistics per channel (axis 1) at most; a
    # channels-last [B, H, W, C] tensor's per-feature statistics would be pooled
    if mode == "constant" and (x.spatial is not None or (
            x.rank == rank and set(x.tracked_axes()) <= {1})):
        padded = pad_classes(x, in_shape, {a: p for a, p in pads.items() if p != (0, 0)}, value)
        if padded is not None:
            return [padded]
    mean, var = full_grid(x, rank) if x.rank else (x.mean, x.var)
    mean, var = np.array(mean, dtype=np.float64), np.array(var, dtype=np.float64)
    if mode == "constant":
        mean, var, spelled = _track_padded(mean, var, in_shape, pads, rank)
    else:
        spelled = ()
    kept = 1.0  # fraction of elements that are x's, over the untracked padded axes
    for axis, (b, e) in sorted(pads.items()):
        if b == 0 and e == 0:
            continue
        size = in_shape[axis]
        tracked = mean.ndim > 0 and (mean.shape[axis] > 1 or axis in spelled)
        if tracked:
            crop = slice(max(0, -b), size - max(0, -e))
            mean, var = (
                np.take(mean, np.arange(size)[crop], axis),
                np.take(var, np.arange(size)[crop], axis),
            )
            widths = [(0, 0)] * rank
            widths[axis] = (max(0, b), max(0, e))
            if mode == "constant":
                mean = np.pad(mean, widths, constant_values=value)
                var = np.pad(var, widths, constant_values=0.0)
            else:
                mean, var = np.pad(mean, widths, mode=mode), np.pad(var, widths, mode=mode)
        elif mode == "constant":
            inside = size + min(0, b) + min(0, e)
            kept *= inside / (inside + max(0, b) + max(0, e))
    if kept == 1.0:
        return [Moments(mean, var)]
    e1 = kept * mean + (1 - kept) * value
    e2 = kept * (var + mean**2) + (1 - kept) * value**2
    return [Moments(e1, e2 - e1**2)]


# ---------------------------------------------------------------------------------------------
# Resize, DepthToSpace, SpaceToDepth


@rule("DepthToSpace", "SpaceToDepth")
def depth_space(inputs, ctx: RuleContext):
    """Channels move to b x b spatial blocks (or back). DepthToSpace: output channel c gets the
    b^2 input channels k C' + c (DCR) or c b^2 + k (CRD), equally often: E = mean_k mu,
    Var = mean_k (nu + mu^2) - E^2. SpaceToDepth: output channel k C + c is input channel c."""
    x = signal(inputs, 0)
    if x.is_scalar:
        return [scalar_of(x)]
    b = int(ctx.attr("blocksize"))
    c_in = ctx.in_shape(0)[1]
    mu, nu = x.values_along(1, c_in)
    if ctx.node.op_type == "SpaceToDepth":
        return [Moments.along(np.tile(mu, b * b), np.tile(nu, b * b), 1, 4)]
    c_out = c_in // (b * b)
    if ctx.attr("mode", "DCR") == "CRD":
        mu, nu = mu.reshape(c_out, b * b), nu.reshape(c_out, b * b)
    else:
        mu, nu = mu.reshape(b * b, c_out).T, nu.reshape(b * b, c_out).T
    mean = mu.mean(axis=1)
    return [Moments.along(mean, (nu + mu**2).mean(axis=1) - mean**2, 1, 4)]


