"""Statistics on the broadcast grid of an arithmetic node's operands.

Operands are signals (Moments) or constants (their exact values, variance 0), laid out at the
output's rank. A grid of statistics is kept whole when it is small (at most :data:`KEEP_CAP`
cells), else folded back onto the signal's tracked axes by the law of total variance, which is
exact for the per-index statistics over the folded axes::

    E_k = mean_f E_kf,   Var_k = mean_f Var_kf + var_f E_kf
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .context import RuleContext, RuleError
from .mixture import lift

GRID_CAP = 1 << 22  # elements of a statistics grid before it is folded further
KEEP_CAP = 1 << 16  # grids up to this many cells are kept whole (never folded)


def out_rank(ctx: RuleContext) -> int:
    """The rank the operands are laid out at: the output's, else the largest input's."""
    shape = ctx.graph.shape(ctx.node.output[0])
    if shape is not None:
        return len(shape)
    ranks = [len(s) for s in (ctx.graph.shape(n) for n in ctx.node.input if n) if s is not None]
    if not ranks:
        raise RuleError("no static shape to align the operands")
    return max(ranks)


def operand(inputs, ctx: RuleContext, i: int, rank: int, masked: bool = False
            ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(mean, var, is_signal) of input ``i`` laid out at ``rank``; constants have variance 0
    (and may hold -inf, a mask, when ``masked``)."""
    m = inputs[i] if i < len(inputs) else None
    if m is not None:
        return lift(m.mean, rank), lift(m.var, rank), True
    c = ctx.const(i)
    if c is None:
        raise RuleError(f"input {i} is neither a signal nor constant")
    c = np.asarray(c, dtype=np.float64)
    if not np.all(np.isfinite(c) | (masked & np.isneginf(c))):
        raise RuleError(f"constant input {i} is not finite")
    c = lift(c, rank)
    return c, np.zeros_like(c), False


def varying_axes(*arrays: np.ndarray) -> set[int]:
    """The axes along which the broadcast of ``arrays`` has more than one cell."""
    shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    return {i for i, n in enumerate(shape) if n > 1}


def varies(a) -> bool:
    """True when ``a`` varies along more than one axis (a grid, not per-channel)."""
    return len(varying_axes(a)) > 1


def signal_axes(inputs, rank: int) -> set[int]:
    """The axes the signal operands' statistics vary along."""
    axes: set[int] = set()
    for m in inputs:
        if m is not None:
            axes |= varying_axes(lift(m.mean, rank), lift(m.var, rank))
    return axes


def fold(mean: np.ndarray, var: np.ndarray, keep) -> Moments:
    """Moments tracked along ``keep`` only: E_k = mean_f E, Var_k = mean_f Var + var_f E over
    the other axes (uniform weights: each grid cell stands for the same number of elements)."""
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    other = tuple(i for i in range(mean.ndim) if i not in set(keep) and mean.shape[i] > 1)
    if not other:
        return Moments(mean.copy(), var.copy())
    m = mean.mean(axis=other, keepdims=True)
    v = var.mean(axis=other, keepdims=True) + ((mean - m) ** 2).mean(axis=other, keepdims=True)
    return Moments(m, v)


def finish(mean, var, signal_axes: set[int], keep: int = KEEP_CAP) -> Moments:
    """Keep the whole grid when it is small (<= ``keep`` cells: a positional embedding's
    per-position means stay per position, so that a later mean over the sequence averages them
    instead of counting them as noise), or when it varies only along the signal's tracked axes;
    else fold a constant's variation along other axes, keeping its last varying axis for a
    scalar signal."""
    axes = varying_axes(mean, var)
    size = int(np.prod(np.broadcast_shapes(np.shape(mean), np.shape(var))))
    if size <= keep or ((axes <= signal_axes or len(axes) <= 1) and size <= GRID_CAP):
        return Moments(mean, var)
    keep = signal_axes if signal_axes else {max(axes)}
    return fold(mean, var, keep)
