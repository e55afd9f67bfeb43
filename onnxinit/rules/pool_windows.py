"""Pooling windows: their geometry (pads, strides, dilations, ceil_mode) per output position
class, and per-channel summaries of per-position statistics, shared by the average and max
pooling rules (rules/pooling.py, rules/max_windows.py)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx

from ..moments import Moments, Source
from ..spatial import select, window, with_corr
from .context import RuleContext


def pads(ctx: RuleContext, in_sizes, out_sizes, kernel, strides, dilations):
    """(begin, end) pads per spatial axis, auto_pad resolved from the static shapes."""
    n = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * 2 * n))
        return pads[:n], pads[n:]
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    begins, ends = [], []
    for i in range(n):
        extent = (kernel[i] - 1) * dilations[i] + 1
        total = max(0, (out_sizes[i] - 1) * strides[i] + extent - in_sizes[i])
        begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        begins.append(begin)
        ends.append(total - begin)
    return begins, ends


def distinct_windows(ctx: RuleContext) -> list[tuple[int, int, float]]:
    """Distinct windows over output positions: (taps inside the input, taps inside the padded
    input, fraction of positions)."""
    x_shape, y_shape = ctx.in_shape(0), ctx.out_shape(0)
    kernel, strides, dilations = window_geometry(ctx)
    n = len(kernel)
    begins, ends = pads(ctx, x_shape[2:], y_shape[2:], kernel, strides, dilations)
    per_axis = []
    for d in range(n):
        pos = (
            np.arange(y_shape[2 + d])[:, None] * strides[d]
            - begins[d]
            + np.arange(kernel[d])[None, :] * dilations[d]
        )
        # ceil_mode: a window starting in the end padding is dropped (onnxruntime, PyTorch);
        # onnx shape inference may still count it
        pos = pos[pos[:, 0] < x_shape[2 + d]] if ctx.attr("ceil_mode", 0) else pos
        inside = ((pos >= 0) & (pos < x_shape[2 + d])).sum(axis=1)
        padded = ((pos >= -begins[d]) & (pos < x_shape[2 + d] + ends[d])).sum(axis=1)
        pairs, counts = np.unique(np.stack([inside, padded], axis=1), axis=0, return_counts=True)
        per_axis.append([(int(a), int(b), c / len(inside)) for (a, b), c in zip(pairs, counts)])
    windows: dict[tuple[int, int], float] = {}
    for combo in itertools.product(*per_axis):
        inside = int(np.prod([c[0] for c in combo]))
        padded = int(np.prod([c[1] for c in combo]))
        weight = float(np.prod([c[2] for c in combo]))
        windows[(inside, padded)] = windows.get((inside, padded), 0.0) + weight
    return [(a, b, w) for (a, b), w in windows.items()]


def class_windows(ctx: RuleContext, maps):
    """Output position classes of a pooling window over input classes ``maps``: per axis
    (out_map, taps [R, k]) with taps -1 in the pads and -2 beyond them (ceil_mode)."""
    x_shape, y_shape = ctx.in_shape(0), ctx.out_shape(0)
    kernel, strides, dilations = window_geometry(ctx)
    n = len(kernel)
    begins, ends = pads(ctx, x_shape[2:], y_shape[2:], kernel, strides, dilations)
    out_maps, taps = [], []
    for d in range(n):
        size = y_shape[2 + d]
        if ctx.attr("ceil_mode", 0):  # a window starting in the end padding is dropped
            size = int(np.sum(np.arange(size) * strides[d] - begins[d] < x_shape[2 + d]))
        m, t = window(maps[d], size, kernel[d], strides[d], dilations[d], begins[d], ends[d])
        out_maps.append(m)
        taps.append(t)
    return out_maps, taps


def tap_counts(taps, lowest: int) -> np.ndarray:
    """Per output cell, the number of taps with class >= ``lowest`` (0: inside the input, -1:
    inside the padded input): a product over the axes ``[R_0, ..., R_{n-1}]``."""
    out = np.ones(())
    for t in taps:
        out = np.multiply.outer(out, (t >= lowest).sum(axis=1).astype(np.float64))
    return out


def cell_arrays(sp, c: int) -> tuple[np.ndarray, np.ndarray]:
    mu, nu = np.broadcast_arrays(sp.cells.mean, sp.cells.var)
    shape = (c,) + tuple(sp.classes)
    return np.broadcast_to(mu[0], shape), np.broadcast_to(nu[0], shape)


def mix(parts: list[tuple[np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel moments over positions of kinds r (mean_r, var_r, weight_r):
    mean = sum w mean_r, var = sum w var_r + sum w (mean_r - mean)^2."""
    mean = sum(w * m for m, _, w in parts)
    var = sum(w * v for _, v, w in parts) + sum(w * (m - mean) ** 2 for m, _, w in parts)
    return mean, var


def spatially_uniform(x: Moments) -> bool:
    return all(a == 1 for a in x.tracked_axes()) or x.is_scalar


def per_channel(x: Moments, x_shape) -> Moments:
    """x with statistics that vary along spatial axes (a padded Conv's per-position output)
    pooled per channel: the moments by the law of total variance, and the source's Gaussian
    likewise (its element-wise chain kept), so that maxima sample one distribution per
    channel, as when the statistics were per channel from the start."""
    if spatially_uniform(x):
        return x
    rank, c = len(x_shape), x_shape[1]
    m, v = x.values_along(1, c)
    src = x.source
    if src is not None and max(np.ndim(src.mean), np.ndim(src.var)) <= rank:
        pooled_src = Moments.along(
            *Moments(src.mean, src.var).expand_rank(rank).values_along(1, c), 1, rank)
        src = Source(pooled_src.mean, pooled_src.var, src.chain)
    else:
        src = None
    pooled = Moments.along(m, v, 1, rank)
    return Moments(pooled.mean, pooled.var, src)


def window_geometry(ctx: RuleContext):
    kernel = list(ctx.attr("kernel_shape"))
    n = len(kernel)
    return kernel, list(ctx.attr("strides", [1] * n)), list(ctx.attr("dilations", [1] * n))


def composed_max_pool(ctx: RuleContext) -> ComposedPool | None:
    """A MaxPool of a MaxPool's output is one MaxPool of the first one's input over the union
    of its windows (GoogLeNet's pool branch after a stride-2 max pool): per axis, with the
    inner pool's kernel k1, stride s1, begin pad b1 and the outer's k2, s2, b2,

        kernel = (k2 - 1) s1 + k1,  stride = s1 s2,  begin pad = b2 s1 + b1

    (a window of the outer pool starting before the inner map, or past its end, loses the same
    inner windows as the composed one loses rows). The context of that composed node, with the
    outer node's output; None when the input is not a MaxPool's, either pool is dilated, the
    inner windows leave gaps (s1 > k1). Rows the inner pool never covers (a floor-mode pool
    that drops the map's last rows) are cropped from the composed pool's input."""
    producer = ctx.graph.producer.get(ctx.node.input[0])
    if producer is None or ctx.graph.node(producer).op_type != "MaxPool":
        return None
    inner = ctx.for_node(producer)
    x_shape, mid_shape, y_shape = inner.in_shape(0), ctx.in_shape(0), ctx.out_shape(0)
    parts = []
    for c in (inner, ctx):
        kernel, strides, dilations = window_geometry(c)
        sizes_in, sizes_out = c.in_shape(0)[2:], c.out_shape(0)[2:]
        if any(d != 1 for d in dilations):
            return None
        begins, _ = pads(c, sizes_in, sizes_out, kernel, strides, dilations)
        parts.append((kernel, strides, begins))
    (k1, s1, b1), (k2, s2, b2) = parts
    kernel, strides, begins, ends, sizes = [], [], [], [], []
    for axis in range(len(k1)):
        if s1[axis] > k1[axis]:
            return None
        k = (k2[axis] - 1) * s1[axis] + k1[axis]
        s = s1[axis] * s2[axis]
        b = b2[axis] * s1[axis] + b1[axis]
        covered = (mid_shape[2 + axis] - 1) * s1[axis] - b1[axis] + k1[axis] - 1
        size = min(x_shape[2 + axis], covered + 1)  # rows past the inner windows: cropped
        last = (y_shape[2 + axis] - 1) * s - b + k - 1
        kernel.append(k)
        strides.append(s)
        begins.append(b)
        ends.append(max(0, last - (size - 1)))
        sizes.append(size)
    node = onnx.helper.make_node("MaxPool", [inner.node.input[0]], [ctx.node.output[0]],
                                 kernel_shape=kernel, strides=strides, pads=begins + ends)
    return ComposedPool(node, ctx.node_id, ctx.graph, ctx.settings, known=ctx.known,
                        input_shape=tuple(x_shape[:2]) + tuple(sizes))


@dataclass
class ComposedPool(RuleContext):
    """The context of a composed MaxPool (:func:`composed_max_pool`): its input is the inner
    pool's input cropped to ``input_shape`` (the rows the inner windows cover)."""

    input_shape: tuple[int, ...] = ()

    def in_shape(self, index: int = 0) -> tuple[int, ...]:
        return self.input_shape

    def cropped(self, x: Moments) -> Moments:
        """The inner pool's input moments restricted to the covered rows."""
        full = self.graph.shape(self.node.input[0])
        if x.spatial is None or tuple(full) == self.input_shape:
            return x
        corr = x.spatial.corr
        for axis, (have, keep) in enumerate(zip(full, self.input_shape)):
            if axis >= 2 and keep < have:
                x = select(x, axis, np.arange(keep))
        return x if corr is None else with_corr(x, corr, x.spatial.maps)
