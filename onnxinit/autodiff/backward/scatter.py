"""Scatters: ScatterElements and ScatterND (reductions 'none' and 'add'), the inverse reads
of the gathers (with the data-movement family, ``shape.py``)."""

from __future__ import annotations

from ...errors import UnsupportedModelError
from .registry import backward


@backward("ScatterElements")
def scatter_elements(ctx, grads):
    """Y = X with Y[p with p[axis] := I[p]] = U[p] (reduction 'none') or += U[p] ('add'):
    dU = gather_elements(dY, I) along axis; dX = dY ('add') or dY with the written positions
    zeroed ('none': those entries of X do not reach Y). Indices repeated under 'none' are
    undefined behaviour in ONNX and are not special-cased."""
    axis = ctx.attr("axis", 0) % len(ctx.shape(ctx.node.input[0]))
    return _scatter(ctx, grads, "ScatterElements", "GatherElements", axis=axis)


@backward("ScatterND")
def scatter_nd(ctx, grads):
    """Y = X with Y[I[j]] = U[j] (reduction 'none') or += U[j] ('add'), I's last axis indexing
    X's leading axes: dU = gather_nd(dY, I); dX = dY ('add') or dY with the written slices
    zeroed ('none'). Repeated indices under 'none' as for ScatterElements (Swin's
    shifted-window mask is a ScatterND, of constants)."""
    return _scatter(ctx, grads, "ScatterND", "GatherND")


def _scatter(ctx, grads, scatter: str, gather: str, **attrs):
    """[dX, None, dU] of a scatter op whose inverse read is ``gather``."""
    _, indices, updates = ctx.node.input
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise UnsupportedModelError(f"{ctx.describe()}: reduction={reduction!r} is not "
                                    "differentiable here (only 'none' and 'add')")
    dx = du = None
    if ctx.requires(0):
        dx = grads[0] if reduction == "add" else ctx.emit(
            scatter, [grads[0], indices, ctx.zeros(ctx.shape(updates), like=updates)], **attrs)
    if ctx.requires(2):
        du = ctx.emit(gather, [grads[0], indices], **attrs)
    return [dx, None, du]
