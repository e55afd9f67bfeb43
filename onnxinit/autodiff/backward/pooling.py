"""Pools. MaxPool routes each output gradient to the input element its window picked: for
a 2-D pool whose windows tile the input (square kernel = stride, no pads, no dilation) as a
one-hot mask of the ArgMax within each block (SpaceToDepth, ArgMax, Mul, DepthToSpace: a few
element-wise passes), otherwise through the Indices output (flat over N*C*H*W of the unpadded
input) with ScatterElements(add); AveragePool
spreads it over its window with a depthwise ConvTranspose of ones after dividing by the window's
divisor, computed statically for pads, ceil_mode and count_include_pad."""

from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError
from .registry import backward
from .windows import explicit_pads, transposed_geometry


def _pool_geometry(ctx, x_shape, y_shape):
    kernel = list(ctx.attr("kernel_shape"))
    spatial = len(kernel)
    strides = list(ctx.attr("strides", None) or [1] * spatial)
    dilations = list(ctx.attr("dilations", None) or [1] * spatial)
    begin, end = explicit_pads(ctx.attr("auto_pad", "NOTSET"), ctx.attr("pads"), x_shape[2:],
                               y_shape[2:], kernel, strides, dilations)
    return kernel, strides, dilations, begin, end


def _tile(ctx, x_shape, y_shape) -> int | None:
    """The block size b when a MaxPool's windows are the b x b blocks of its 2-D input (kernel
    = stride = b on both axes, no pads, no dilation, sizes multiples of b); else None."""
    if len(x_shape) != 4:
        return None
    kernel, strides, dilations, begin, end = _pool_geometry(ctx, x_shape, y_shape)
    b = kernel[0]
    tiles = (kernel == [b, b] and strides == [b, b] and dilations == [1, 1]
             and not any(begin + end) and b > 1
             and all(o * b == size for o, size in zip(y_shape[2:], x_shape[2:])))
    return b if tiles else None


def _tiled_max_pool(ctx, g, x, x_shape, b: int) -> str:
    """dX for non-overlapping b x b windows: the b^2 taps of each window become channels
    (SpaceToDepth, tap-major), the first maximum's tap (ArgMax: the first in raster order, as
    MaxPool picks it) is a one-hot mask that dY is multiplied by, and DepthToSpace puts the
    taps back. (A Where in place of the Cast and Mul is slower in onnxruntime.)"""
    n, c, h, w = x_shape
    taps, cells = b * b, c * (h // b) * (w // b)
    stacked = ctx.emit("Reshape", [ctx.emit("SpaceToDepth", [x], blocksize=b),
                                   ctx.ints([n, taps, cells])])
    picked = ctx.emit("ArgMax", [stacked], axis=1, keepdims=1)
    mask = ctx.emit("Equal", [picked, ctx.ints(np.arange(taps).reshape(taps, 1))])
    spread = ctx.emit("Mul", [ctx.emit("Cast", [mask], to=ctx.elem_type(x)),
                              ctx.emit("Reshape", [g, ctx.ints([n, 1, cells])])])
    flat = ctx.emit("Reshape", [spread, ctx.ints([n, taps * c, h // b, w // b])])
    return ctx.emit("DepthToSpace", [flat], blocksize=b, mode="DCR")


@backward("MaxPool")
def max_pool(ctx, grads):
    """Y[p] = X[argmax_window(p)]:  dX = scatter_add(zeros, Indices, dY) (for tiling windows,
    the same by a one-hot mask of the window's first maximum)."""
    if ctx.attr("storage_order", 0) != 0:
        raise UnsupportedModelError(f"{ctx.describe()}: storage_order=1 is not supported")
    g = grads[0]
    x = ctx.node.input[0]
    x_shape = ctx.shape(x)
    block = _tile(ctx, x_shape, ctx.shape(ctx.node.output[0]))
    if block is not None:
        return [_tiled_max_pool(ctx, g, x, x_shape, block)]
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        indices = ctx.node.output[1]
    else:
        attrs = {a.name: ctx.attr(a.name) for a in ctx.node.attribute}
        _, indices = ctx.emit("MaxPool", [x], 2, **attrs)
    size = int(np.prod(ctx.shape(x)))
    flat = ctx.emit(
        "ScatterElements",
        [ctx.zeros([size], like=x), ctx.emit("Reshape", [indices, ctx.ints([-1])]),
         ctx.emit("Reshape", [g, ctx.ints([-1])])],
        axis=0, reduction="add",
    )
    return [ctx.reshape_like(flat, x)]


def _divisors(in_size, out_size, k, s, d, pad_begin, pad_end, include_pad) -> np.ndarray:
    lo, hi = (-pad_begin, in_size + pad_end) if include_pad else (0, in_size)
    taps = np.arange(out_size)[:, None] * s - pad_begin + np.arange(k)[None, :] * d
    return ((taps >= lo) & (taps < hi)).sum(axis=1)


@backward("AveragePool")
def average_pool(ctx, grads):
    """Y[p] = sum_{q in window(p)} X[q] / divisor(p):  dX[q] = sum_{p: q in window(p)}
    dY[p] / divisor(p), a depthwise conv_transpose of dY / divisor with a kernel of ones."""
    g = grads[0]
    x = ctx.node.input[0]
    x_shape, y_shape = ctx.shape(x), ctx.shape(ctx.node.output[0])
    kernel, strides, dilations, begin, end = _pool_geometry(ctx, x_shape, y_shape)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    divisor = np.ones((), dtype=np.float64)
    for i in range(len(kernel)):
        per_axis = _divisors(x_shape[2 + i], y_shape[2 + i], kernel[i], strides[i], dilations[i],
                             begin[i], end[i], include_pad)
        divisor = np.multiply.outer(divisor, per_axis)
    scaled = ctx.emit("Mul", [g, ctx.const(1.0 / divisor, like=x)])
    channels = x_shape[1]
    ones = ctx.const(np.ones([channels, 1, *kernel]), like=x)
    ends, out_pads = zip(*(
        transposed_geometry(size, out, k, s, d, pb)
        for size, out, k, s, d, pb in zip(x_shape[2:], y_shape[2:], kernel, strides, dilations,
                                          begin)
    ))
    dx = ctx.emit("ConvTranspose", [scaled, ones], group=channels, strides=strides,
                  dilations=dilations, kernel_shape=kernel, pads=list(begin) + list(ends),
                  output_padding=list(out_pads))
    return [dx]


@backward("GlobalAveragePool")
def global_average_pool(ctx, grads):
    """Y[n, c] = mean over space of X[n, c]:  dX = dY / (spatial size), broadcast over space."""
    x = ctx.node.input[0]
    x_shape = ctx.shape(x)
    scaled = ctx.emit("Mul", [grads[0], ctx.const(1.0 / np.prod(x_shape[2:]), like=x)])
    return [ctx.emit("Expand", [scaled, ctx.ints(x_shape)])]
