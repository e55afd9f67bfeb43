"""Linear layers. Matrix products: MatMul (batched, broadcast, 1-D operands) and Gemm.

Convolutions: the input gradient of Conv is a ConvTranspose with explicit pads and a computed
``output_padding`` (never ``output_shape`` or ``auto_pad``); the weight gradient is an im2col
product: strided Slices of the padded input laid out spatial-first, one per kernel tap, each
times the output gradient (one Gemm per tap).
(ORT runs the alternative, a Conv whose kernel is the whole output gradient, several times
slower.) ConvTranspose is the adjoint of Conv, so its two gradients are the same constructions
with the roles exchanged. (The forward family is :mod:`onnxinit.rules.linear`.)

The weight gradient is bilinear in (X, dY); differentiating it again (reverse over reverse)
takes its closed form, a ConvTranspose and a Conv (:func:`weight_gradient_backward`), instead
of the adjoints of its im2col primitives (a Pad or two ScatterElements per kernel tap, their
sum, a Split and two products), which cost about twice as much."""

from __future__ import annotations

import itertools

import numpy as np

from ...errors import UnsupportedModelError
from .registry import backward
from .windows import WeightGradientGeometry, explicit_pads, transposed_geometry


def _swap_last_two(ctx, name: str, rank: int) -> str:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.emit("Transpose", [name], perm=perm)


def _reshaped(ctx, name: str, shape: tuple, new_shape: tuple) -> str:
    return name if shape == new_shape else ctx.emit("Reshape", [name, ctx.ints(new_shape)])


@backward("MatMul")
def matmul(ctx, grads):
    """Y = A @ B (numpy matmul):  dA = dY @ B^T,  dB = A^T @ dY, each summed over the batch
    axes it was broadcast along; a 1-D A is a row vector, a 1-D B a column vector."""
    (g,) = grads
    a, b = ctx.node.input
    a_shape, b_shape = ctx.shape(a), ctx.shape(b)
    a2 = a_shape if len(a_shape) > 1 else (1,) + a_shape
    b2 = b_shape if len(b_shape) > 1 else b_shape + (1,)
    batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    g2 = batch + (a2[-2], b2[-1])
    g_mat = _reshaped(ctx, g, ctx.shape(ctx.node.output[0]), g2)
    da = db = None
    if ctx.requires(0):
        b_mat = _reshaped(ctx, b, b_shape, b2)
        full = ctx.emit("MatMul", [g_mat, _swap_last_two(ctx, b_mat, len(b2))])
        da = _reshaped(ctx, ctx.sum_to(full, batch + a2[-2:], a2), a2, a_shape)
    if ctx.requires(1):
        a_mat = _reshaped(ctx, a, a_shape, a2)
        if len(b2) == 2 and len(a2) > 2:
            # the weight of a linear layer: fold the batch axes into one matrix product
            rows = int(np.prod(a2[:-1]))
            a_rows = ctx.emit("Reshape", [a_mat, ctx.ints([rows, a2[-1]])])
            g_rows = ctx.emit("Reshape", [g_mat, ctx.ints([rows, b2[-1]])])
            db = _reshaped(ctx, ctx.emit("Gemm", [a_rows, g_rows], transA=1), b2, b_shape)
        else:
            full = ctx.emit("MatMul", [_swap_last_two(ctx, a_mat, len(a2)), g_mat])
            db = _reshaped(ctx, ctx.sum_to(full, batch + b2[-2:], b2), b2, b_shape)
    return [da, db]


@backward("Gemm")
def gemm(ctx, grads):
    """Y = alpha A' B' + beta C with A' = A^T if transA, B' = B^T if transB:
    dA' = alpha dY B'^T,  dB' = alpha A'^T dY,  dC = beta dY summed over broadcast axes."""
    (g,) = grads
    a, b = ctx.node.input[:2]
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    da = db = dc = None
    if ctx.requires(0):
        if trans_a:
            da = ctx.emit("Gemm", [b, g], alpha=alpha, transA=trans_b, transB=1)
        else:
            da = ctx.emit("Gemm", [g, b], alpha=alpha, transB=1 - trans_b)
    if ctx.requires(1):
        if trans_b:
            db = ctx.emit("Gemm", [g, a], alpha=alpha, transA=1, transB=trans_a)
        else:
            db = ctx.emit("Gemm", [a, g], alpha=alpha, transA=1 - trans_a)
    if ctx.requires(2):
        c = ctx.node.input[2]
        scaled = g if beta == 1.0 else ctx.emit("Mul", [g, ctx.const(beta, like=c)])
        dc = ctx.unbroadcast(scaled, ctx.shape(ctx.node.output[0]), c)
    return [da, db, dc][: len(ctx.node.input)]


def _window_attrs(ctx, spatial: int):
    ones = [1] * spatial
    strides = list(ctx.attr("strides", None) or ones)
    dilations = list(ctx.attr("dilations", None) or ones)
    return strides, dilations, ctx.attr("group", 1)


def _end_pads(in_sizes, out_sizes, kernel, strides, dilations, pad_begin) -> list[int]:
    """The zero rows past the input that the last of ``out_sizes`` windows reaches."""
    return [max(s * (o - 1) + d * (k - 1) + 1 - pb - size, 0) for size, o, k, s, d, pb in zip(
        in_sizes, out_sizes, kernel, strides, dilations, pad_begin)]


def _cropped(ctx, y, y_sizes, sizes):
    """``y`` (a window op's output with ``y_sizes`` positions) cut to its first ``sizes``."""
    if list(y_sizes) == list(sizes):
        return y
    axes = list(range(2, 2 + len(sizes)))
    return ctx.emit("Slice", [y, ctx.ints([0] * len(axes)), ctx.ints(sizes), ctx.ints(axes)])


def _window_count(in_sizes, pad_begin, pad_end, kernel, strides, dilations) -> list[int]:
    """Output positions of a Conv over ``in_sizes`` with these pads and window."""
    return [(size + pb + pe - d * (k - 1) - 1) // s + 1 for size, pb, pe, k, s, d in zip(
        in_sizes, pad_begin, pad_end, kernel, strides, dilations)]


def _taps(ctx, x, x_shape, out_sizes, kernel, strides, dilations, pad_begin) -> list[str]:
    """im2col with the batch folded into the positions, one (P * N, C) matrix per kernel tap
    (P = prod(out_sizes) output positions, position-major); entry [(p, n), c] of tap k is
    X[n, c, p s + k d - pad] (zero outside X). X is laid out spatial-first, (H, W, N, C), so a
    tap's Slice copies whole (N, C) blocks (in (C, N, H, W) it copied rows of W floats, and
    cost more than the products)."""
    n, channels, *in_sizes = x_shape
    spatial = len(kernel)
    pad_end = _end_pads(in_sizes, out_sizes, kernel, strides, dilations, pad_begin)
    unpadded = ctx.emit("Transpose", [x], perm=[*range(2, 2 + spatial), 0, 1])
    spatial_major = unpadded
    if any(pad_begin) or any(pad_end):
        spatial_major = ctx.emit("Pad", [unpadded, ctx.ints(
            [*pad_begin, 0, 0, *pad_end, 0, 0])], mode="constant")
    padded_sizes = [size + b + e for size, b, e in zip(in_sizes, pad_begin, pad_end)]
    rows = n * int(np.prod(out_sizes))
    axes = ctx.ints(range(spatial))
    steps = ctx.ints(strides)
    taps = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        starts = [j * d for j, d in zip(offset, dilations)]
        ends = [b + s * (o - 1) + 1 for b, s, o in zip(starts, strides, out_sizes)]
        tap = spatial_major
        if strides == [1] * spatial and starts == list(pad_begin) and ends == [
                b + size for b, size in zip(pad_begin, in_sizes)]:
            tap = unpadded  # the tap that reads X itself (a "same" conv's centre): no Slice
        elif starts != [0] * spatial or ends != padded_sizes or strides != [1] * spatial:
            tap = ctx.emit("Slice", [spatial_major, ctx.ints(starts), ctx.ints(ends), axes, steps])
        taps.append(ctx.emit("Reshape", [tap, ctx.ints([rows, channels])]))
    return taps


def weight_gradient(ctx, x, x_shape, g, g_shape, kernel, strides, dilations, pad_begin, group):
    """dW[m, c, k] = sum_{n, p} dY[n, m, p] X[n, group(m) c, p s + k d - pad] for a Conv with
    input ``x`` and output gradient ``g``: im2col of X (one strided Slice per kernel tap, batch
    folded into the positions) times dY, one matrix product per tap (and group). The node that
    outputs dW records the geometry (:class:`~.windows.WeightGradientGeometry`)."""
    dw = _weight_gradient_products(ctx, x, x_shape, g, g_shape, kernel, strides, dilations,
                                   pad_begin, group)
    ctx.annotate(WeightGradientGeometry(x, g, tuple(kernel), tuple(strides), tuple(dilations),
                                        tuple(pad_begin), group).encode())
    return dw


def _weight_gradient_products(ctx, x, x_shape, g, g_shape, kernel, strides, dilations,
                              pad_begin, group):
    n, c_in = x_shape[:2]
    c_out, out_sizes = g_shape[1], list(g_shape[2:])
    rows = n * int(np.prod(out_sizes))
    taps = _taps(ctx, x, x_shape, out_sizes, kernel, strides, dilations, pad_begin)
    spatial = len(out_sizes)
    if group == 1:
        # a Gemm per tap, (C_out, P N) x (P N, C_in), dY laid out (C_out, *out_sizes, N) to
        # match the taps' rows: no (P N, C_in K) im2col matrix is ever concatenated (that copy
        # cost as much as the products), and no operand is transposed inside the Gemm (MLAS
        # packs a transposed (P N)-long operand slowly)
        g_rows = ctx.emit("Transpose", [g], perm=[1, *range(2, 2 + spatial), 0])
        columns = ctx.emit("Reshape", [g_rows, ctx.ints([c_out, rows])])
        products = [ctx.emit("Reshape", [ctx.emit("Gemm", [columns, tap]),
                                         ctx.ints([c_out, c_in, 1])]) for tap in taps]
        stacked = products[0] if len(products) == 1 else ctx.emit("Concat", products, axis=2)
        return ctx.emit("Reshape", [stacked, ctx.ints([c_out, c_in, *kernel])])
    # grouped: (group, C/group, N P) matrices, taps stacked after the group's channels
    patches = ctx.emit("Concat", [ctx.emit("Reshape", [t, ctx.ints([rows, group, c_in // group, 1])])
                                  for t in taps], axis=3)
    flat = ctx.emit("Transpose", [ctx.emit("Reshape", [patches, ctx.ints([rows, group, -1])])],
                    perm=[1, 0, 2])
    g_spatial_major = ctx.emit("Transpose", [g], perm=[*range(2, 2 + spatial), 0, 1])
    per_group = ctx.emit("Transpose", [ctx.emit("Reshape", [g_spatial_major, ctx.ints(
        [rows, group, c_out // group])])], perm=[1, 2, 0])
    product = ctx.emit("MatMul", [per_group, flat])  # (group, C_out/group, C_in/group K)
    return ctx.emit("Reshape", [product, ctx.ints([c_out, c_in // group, *kernel])])


def input_gradient(ctx, g, w, x_shape, g_shape, kernel, strides, dilations, pad_begin, group):
    """dX[n, c, q] = sum over (m, p, k) with p s + k d - pad = q of W[m, c, k] dY[n, m, p]: a
    ConvTranspose of dY with W onto X's positions (explicit pads; the rows past the last one a
    window reaches are an ``output_padding``, or a Pad where it would reach a stride)."""
    ends, out_pads = zip(*(
        transposed_geometry(size, out, k, s, d, pb)
        for size, out, k, s, d, pb in zip(
            x_shape[2:], g_shape[2:], kernel, strides, dilations, pad_begin)
    ))
    padding_in_op = all(p < max(s, d) for p, s, d in zip(out_pads, strides, dilations))
    dx = ctx.emit(
        "ConvTranspose", [g, w], group=group, strides=list(strides), dilations=list(dilations),
        kernel_shape=list(kernel), pads=list(pad_begin) + list(ends),
        output_padding=list(out_pads) if padding_in_op else [0] * len(kernel),
    )
    if padding_in_op or not any(out_pads):
        return dx
    return ctx.emit("Pad", [dx, ctx.ints([0, 0] + [0] * len(kernel) + [0, 0] + list(out_pads))],
                    mode="constant")


def weight_gradient_backward(ctx, geometry: WeightGradientGeometry, grad: str,
                             requires: tuple[bool, bool]) -> list[str | None]:
    """Gradients for (x, g) of dW = weight_gradient(x, g), given G = dL/ddW (the shape of W):
    dx = conv_transpose(g, G) (:func:`input_gradient`) and dg = conv(x, G), cropped to g's
    positions; the window of ``geometry`` with G in the weight's place."""
    x, g = geometry.x, geometry.g
    x_shape, g_shape = ctx.shape(x), ctx.shape(g)
    strides, dilations = list(geometry.strides), list(geometry.dilations)
    pad_begin, kernel = list(geometry.pad_begin), list(geometry.kernel)
    dx = dg = None
    if requires[0]:
        dx = input_gradient(ctx, g, grad, x_shape, g_shape, kernel, strides, dilations,
                            pad_begin, geometry.group)
    if requires[1]:
        pad_end = _end_pads(x_shape[2:], g_shape[2:], kernel, strides, dilations, pad_begin)
        dg = ctx.emit("Conv", [x, grad], group=geometry.group, strides=strides,
                      dilations=dilations, kernel_shape=kernel, pads=pad_begin + pad_end)
        rows = _window_count(x_shape[2:], pad_begin, pad_end, kernel, strides, dilations)
        dg = _cropped(ctx, dg, rows, g_shape[2:])
    return [dx, dg]


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
        dx = input_gradient(ctx, g, w, x_shape, y_shape, kernel, strides, dilations, pad_begin,
                            group)
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
        rows = _window_count(y_shape[2:], pad_begin, pad_end, kernel, strides, dilations)
        dx = _cropped(ctx, dx, rows, x_shape[2:])
    if ctx.requires(1):
        dw = weight_gradient(ctx, g, y_shape, x, x_shape, kernel, strides, dilations, pad_begin,
                             group)
    if ctx.requires(2):
        db = bias_gradient(ctx, g, len(y_shape))
    return [dx, dw, db][: len(ctx.node.input)]
