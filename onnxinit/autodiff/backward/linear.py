"""Matrix products: MatMul (batched, broadcast, 1-D operands) and Gemm."""

from __future__ import annotations

import numpy as np

from .registry import backward


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
