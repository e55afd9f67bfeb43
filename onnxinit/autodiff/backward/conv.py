"""Convolutions. The input gradient of Conv is a ConvTranspose with explicit pads and a computed
``output_padding`` (never ``output_shape`` or ``auto_pad``); the weight gradient is one grouped
Conv in which the batch axis plays the role of the channels. ConvTranspose is the adjoint of
Conv, so its two gradients are the same constructions with the roles exchanged."""

from __future__ import annotations

from ...errors import UnsupportedModelError
from .registry import backward
from .windows import explicit_pads, transposed_geometry


def _window_attrs(ctx, spatial: int):
    ones = [1] * spatial
    strides = list(ctx.attr("strides", None) or ones)
    dilations = list(ctx.attr("dilations", None) or ones)
    return strides, dilations, ctx.attr("group", 1)


def weight_gradient(ctx, x, x_shape, g, g_shape, kernel, strides, dilations, pad_begin, group):
    """dW[m, c, k] = sum_{n, p} X[n, group(m) c, p s + k d - pad] dY[n, m, p] for a Conv with
    input ``x`` and output gradient ``g``: a Conv over X' (batch = channels in a group,
    channels = group x batch) with kernel dY' (output channels, batch), strides and dilations
    exchanged, sliced to the kernel size and transposed to (out, in/group, *kernel)."""
    n, c_in, *in_sizes = x_shape
    c_out, out_sizes = g_shape[1], g_shape[2:]
    spatial = len(in_sizes)
    c_in_g = c_in // group
    if group == 1:
        x_t = ctx.emit("Transpose", [x], perm=[1, 0, *range(2, 2 + spatial)])
        g_t = ctx.emit("Transpose", [g], perm=[1, 0, *range(2, 2 + spatial)])
    else:
        x_split = ctx.emit("Reshape", [x, ctx.ints([n, group, c_in_g, *in_sizes])])
        x_perm = ctx.emit("Transpose", [x_split], perm=[2, 1, 0, *range(3, 3 + spatial)])
        x_t = ctx.emit("Reshape", [x_perm, ctx.ints([c_in_g, group * n, *in_sizes])])
        g_split = ctx.emit("Reshape", [g, ctx.ints([n, group, c_out // group, *out_sizes])])
        g_perm = ctx.emit("Transpose", [g_split], perm=[1, 2, 0, *range(3, 3 + spatial)])
        g_t = ctx.emit("Reshape", [g_perm, ctx.ints([c_out, n, *out_sizes])])
    pad_end, sizes = [], []
    for size, out, k, s, d, pb in zip(in_sizes, out_sizes, kernel, strides, dilations, pad_begin):
        # Conv of X' (pads pb, pe) with a kernel of `out` taps at dilation s, stride d
        span = s * (out - 1) + d * (k - 1) + 1
        end = max(span - pb - size, 0)
        pad_end.append(end)
        sizes.append((size + pb + end - s * (out - 1) - 1) // d + 1)
    full = ctx.emit(
        "Conv", [x_t, g_t], group=group, strides=list(dilations), dilations=list(strides),
        pads=list(pad_begin) + pad_end,
    )
    if list(sizes) != list(kernel):
        axes = list(range(2, 2 + spatial))
        full = ctx.emit("Slice", [full, ctx.ints([0] * spatial), ctx.ints(kernel), ctx.ints(axes)])
    return ctx.emit("Transpose", [full], perm=[1, 0, *range(2, 2 + spatial)])


def bias_gradient(ctx, g, rank):
    """dB[c] = sum over batch and spatial positions of dY[:, c]."""
    return ctx.emit("ReduceSum", [g, ctx.ints([0, *range(2, rank)])], keepdims=0)


@backward("Conv")
def conv(ctx, grads):
    """Y = conv(X, W) + B:  dX = conv_transpose(dY, W),  dW = weight_gradient(X, dY),
    dB = sum of dY over batch and space."""
    (g,) = grads
    x, w = ctx.node.input[:2]
    x_shape, w_shape, y_shape = ctx.shape(x), ctx.shape(w), ctx.shape(ctx.node.output[0])
    kernel = list(w_shape[2:])
    spatial = len(kernel)
    strides, dilations, group = _window_attrs(ctx, spatial)
    pad_begin, _ = explicit_pads(
        ctx.attr("auto_pad", "NOTSET"), ctx.attr("pads"), x_shape[2:], y_shape[2:], kernel,
        strides, dilations,
    )
    dx = dw = db = None
    if ctx.requires(0):
        ends, out_pads = zip(*(
            transposed_geometry(size, out, k, s, d, pb)
            for size, out, k, s, d, pb in zip(
                x_shape[2:], y_shape[2:], kernel, strides, dilations, pad_begin)
        ))
        dx = ctx.emit(
            "ConvTranspose", [g, w], group=group, strides=strides, dilations=dilations,
            kernel_shape=kernel, pads=list(pad_begin) + list(ends), output_padding=list(out_pads),
        )
    if ctx.requires(1):
        dw = weight_gradient(ctx, x, x_shape, g, y_shape, kernel, strides, dilations, pad_begin,
                             group)
    if ctx.requires(2):
        db = bias_gradient(ctx, g, len(y_shape))
    return [dx, dw, db][: len(ctx.node.input)]


def _conv_transpose_pads(ctx, x_shape, y_shape, kernel, strides, dilations):
    spatial = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    out_pads = list(ctx.attr("output_padding", None) or [0] * spatial)
    if ctx.attr("output_shape") is None and auto_pad in ("NOTSET", "VALID"):
        pads = ctx.attr("pads", None) or [0] * (2 * spatial)
        return (list(pads[:spatial]), list(pads[spatial:])) if auto_pad == "NOTSET" else (
            [0] * spatial, [0] * spatial)
    begin, end = [], []
    for i in range(spatial):
        full = strides[i] * (x_shape[2 + i] - 1) + out_pads[i] + dilations[i] * (kernel[i] - 1) + 1
        total = full - y_shape[2 + i]
        small, large = total // 2, total - total // 2
        upper = auto_pad == "SAME_UPPER"
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return begin, end


@backward("ConvTranspose")
def conv_transpose(ctx, grads):
    """Y = conv_transpose(X, W) + B is the adjoint of a Conv with weight W:
    dX = conv(dY, W) with the same strides, dilations, pads and groups,
    dW = weight_gradient of that Conv with input dY and output gradient X,
    dB = sum of dY over batch and space."""
    (g,) = grads
    x, w = ctx.node.input[:2]
    x_shape, w_shape, y_shape = ctx.shape(x), ctx.shape(w), ctx.shape(ctx.node.output[0])
    kernel = list(w_shape[2:])
    strides, dilations, group = _window_attrs(ctx, len(kernel))
    pad_begin, pad_end = _conv_transpose_pads(ctx, x_shape, y_shape, kernel, strides, dilations)
    if min(pad_begin + pad_end) < 0:
        raise UnsupportedModelError(f"{ctx.describe()}: negative implied pads")
    dx = dw = db = None
    if ctx.requires(0):
        dx = ctx.emit("Conv", [g, w], group=group, strides=strides, dilations=dilations,
                      kernel_shape=kernel, pads=pad_begin + pad_end)
        rows = [(y + pb + pe - d * (k - 1) - 1) // s + 1 for y, pb, pe, k, s, d in zip(
            y_shape[2:], pad_begin, pad_end, kernel, strides, dilations)]
        if rows != list(x_shape[2:]):
            axes = list(range(2, len(x_shape)))
            dx = ctx.emit("Slice", [dx, ctx.ints([0] * len(axes)), ctx.ints(x_shape[2:]),
                                    ctx.ints(axes)])
    if ctx.requires(1):
        dw = weight_gradient(ctx, g, y_shape, x, x_shape, kernel, strides, dilations, pad_begin,
                             group)
    if ctx.requires(2):
        db = bias_gradient(ctx, g, len(y_shape))
    return [dx, dw, db][: len(ctx.node.input)]
