"""Add / Sub / Mul / Div and channel Concat of tensors with position classes and spatial
correlation (``Moments.spatial``: ``onnxinit.spatial``, ``onnxinit.correlation``): the
arithmetic rules hand them here when an operand carries them."""

from __future__ import annotations

import numpy as np

from .. import correlation
from ..moments import Moments, Source
from ..spatial import attach, class_weights, joint, positions, take_cells, within_variance
from ..views import broadcast_to
from . import cross_fields
from .context import RuleContext, RuleError
from .mixture import binary_independent, components, lift, sum_mixture


def positions_binary(inputs, ctx: RuleContext, op: str, rank: int) -> Moments | None:
    """Add/Sub/Mul/Div-by-constant of operands of which one carries position classes
    (``onnxinit.spatial``): the same formulas per cell of the operands' joint classes (a
    ``[N, C, 1, 1]`` operand or a per-channel constant is the same in every cell), the sum's
    Gaussian mixture per cell. None when no operand has classes, or a constant (or an operand
    without classes) varies along a spatial axis (then the per-channel path below)."""
    if not any(m is not None and m.spatial is not None for m in inputs) or rank < 3:
        return None
    out_shape = ctx.out_shape(0)
    operands = []
    for i in range(len(inputs)):
        m = inputs[i]
        if m is None:
            c = ctx.const(i)
            if c is None or not np.all(np.isfinite(c)):
                return None
            c = lift(np.asarray(c, dtype=np.float64), rank)
            if any(n > 1 for n in np.shape(c)[2:]) or np.ndim(c) != rank and np.size(c) > 1:
                return None
            if op == "Div" and i == 1:
                if np.any(c == 0):
                    return None
                c = 1.0 / c
            m = Moments(c, np.zeros_like(c))
        elif op == "Div" and i == 1:
            return None  # division by a signal: measured
        elif m.spatial is None and any(n > 1 for a in (m.mean, m.var)
                                       for n in np.shape(lift(a, rank))[2:]):
            return None  # per-position statistics (a coordinate grid added): kept per element
        sp = positions(m, ctx.in_shape(i) if len(ctx.in_shape(i)) == rank else out_shape)
        if sp is None:
            return None
        operands.append(sp)
    maps, selections = joint([sp.maps for sp in operands], out_shape[2:])
    cells = [take_cells(sp.cells, sel) for sp, sel in zip(operands, selections)]
    a = (cells[0].mean, cells[0].var)
    b = (cells[1].mean, cells[1].var)
    mean, var = binary_independent("Mul" if op == "Div" else op, a, b)
    mixture = None
    if op in ("Add", "Sub") and all(m is not None for m in inputs):
        mixture = sum_mixture(cells[0], cells[1], rank, op == "Sub")
    corr = joint_correlation(operands, inputs, op, out_shape)
    if all(m is not None for m in inputs):  # a residual block's skip and branch
        var, mixture, corr = cross_fields.residual_sum(ctx, op, operands, cells, var, mixture,
                                                       corr, out_shape[1])
    return attach(Moments(mean, var, None, mixture), maps, corr)


def joint_correlation(operands, inputs, op: str, out_shape):
    """The output's spatial correlation (``onnxinit.correlation``) from the operands': for a
    sum, covariances add; for a product of independent x and s,
    ``Cov(d) = (Cov_x(d) + mu_x^2)(Cov_s(d) + mu_s^2) - mu_x^2 mu_s^2`` (a per-sample
    ``[N, C, 1, 1]`` operand or a constant is the same at every position: rho = 1). None when
    a signal with spatial axes carries none (unknown: taken as independent downstream)."""
    channels = out_shape[1]
    sizes = out_shape[2:]
    parts, known = [], True  # known: every signal operand has a per-position correlation
    for sp, m in zip(operands, inputs):
        uniform = all(n == 1 for n in (mp.size for mp in sp.maps))
        nu = within_variance(sp, channels) if m is not None else np.zeros(channels)
        mean = broadcast_to(pooled_mean(sp), (channels,))
        if sp.corr is not None:
            corr = sp.corr
        elif uniform or m is None:  # one value per sample (or a constant): rho = 1
            corr = correlation.Correlation(np.ones((1,) * (1 + len(sizes))), np.ones(1))
            known = known and m is None
        else:
            return None
        parts.append((corr, nu, mean))
    if op in ("Add", "Sub"):
        out = correlation.add([(c, nu) for c, nu, _ in parts], sizes)
        if not known:
            return out
        signals = [(c, nu, m is not None) for (c, nu, _), m in zip(parts, inputs)]
        return cross_fields.add(out, signals, channels, sizes)
    (cx, nx, mx), (cs, ns, ms) = parts
    return correlation.product(cx, nx, mx, cs, ns, ms, sizes)


def pooled_mean(sp) -> np.ndarray:
    mean = np.broadcast_to(sp.cells.mean, np.broadcast_shapes(sp.cells.mean.shape,
                                                              (1, 1, *sp.classes)))
    w = class_weights(sp.maps)
    return (mean[0] * w).reshape(mean.shape[1], -1).sum(axis=1)


def concat_channels(inputs, ctx: RuleContext, out_shape) -> Moments:
    """Channel concatenation of tensors with position classes (a DenseNet block): the cells of
    every operand on their joint classes, concatenated along the channel axis, and the
    per-channel correlations likewise (``onnxinit.spatial``, ``onnxinit.correlation``)."""
    rank = len(out_shape)
    spatials, channels = [], []
    for i in range(len(inputs)):
        m = _piece(inputs, ctx, i, rank)
        spatials.append(positions(m, ctx.in_shape(i)))
        channels.append(ctx.in_shape(i)[1])
    maps, selections = joint([sp.maps for sp in spatials], out_shape[2:])
    cells = [take_cells(sp.cells, sel) for sp, sel in zip(spatials, selections)]
    shape = (1,) + tuple(len(sel) for sel in selections[0])
    mean, var = _channel_concat([(c.mean, c.var) for c in cells], channels, shape)
    source = _joint_source(cells, channels, shape)
    mixture = None if source is not None else _joint_mixture(cells, channels, shape)
    cells = Moments(mean, var, source, mixture)
    corr = None
    if any(sp.corr is not None for sp in spatials):
        corr = correlation.concat([(sp.corr, n) for sp, n in zip(spatials, channels)],
                                  out_shape[2:], gaussian=source is not None)
    return attach(cells, maps, corr)




def _channel_concat(pairs, channels, shape) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) arrays laid out like cells, each broadcast to its channels and the joint
    classes ``shape[1:]``, concatenated along the channel axis."""
    means, variances = [], []
    for (mean, var), n in zip(pairs, channels):
        mean, var = np.broadcast_arrays(mean, var)
        full = (1, n) + shape[1:]
        means.append(np.broadcast_to(mean, np.broadcast_shapes(mean.shape, full)))
        variances.append(np.broadcast_to(var, np.broadcast_shapes(var.shape, full)))
    return np.concatenate(means, axis=1), np.concatenate(variances, axis=1)


def _joint_source(cells, channels, shape) -> Source | None:
    """The operands' source Gaussians side by side when they share one chain (the ReLU after
    every branch of an Inception block): the concatenation is then that chain of a Gaussian
    with per-channel moments, and a later max or non-linear rule keeps the law's shape instead
    of a Gaussian with the same two moments. None when a source is missing or the chains
    differ."""
    sources = [c.source for c in cells]
    if any(s is None for s in sources) or any(s.chain != sources[0].chain for s in sources):
        return None
    mean, var = _channel_concat([(s.mean, s.var) for s in sources], channels, shape)
    return Source(mean, var, sources[0].chain)


def _joint_mixture(cells, channels, shape):
    """The operands' laws side by side as Gaussian mixtures when their chains differ and one
    is not Gaussian (Inception-ResNet's reduction block: ReLU branches beside a max pool):
    each operand's components (``mixture.components``: a ReLU's atom at 0 and bins of its
    positive part, a Gaussian as one), padded to the most components with weight 0, so that
    a ReLU or a max after the concat keeps each channel's law. None when every operand is
    Gaussian or one has another chain."""
    rank = len(shape) + 1
    parts = [components(c, rank) for c in cells]
    if any(p is None for p in parts) or all(p[0].shape[0] == 1 for p in parts):
        return None
    most = max(p[0].shape[0] for p in parts)
    out = ([], [], [])
    for (w, m, v), cell, n in zip(parts, cells, channels):
        full = (w.shape[0], 1, n) + shape[1:]
        w, m, v = (np.broadcast_to(a, np.broadcast_shapes(a.shape, full)) for a in (w, m, v))
        pad = (most - w.shape[0],) + w.shape[1:]
        mean, var = (np.broadcast_to(a, np.broadcast_shapes(np.shape(a), w.shape[1:]))
                     for a in (cell.mean, cell.var))
        for dst, a, fill in zip(out, (w, m, v), (np.zeros(pad), np.broadcast_to(mean, pad),
                                                  np.broadcast_to(var, pad))):
            dst.append(np.concatenate([a, fill]))
    return tuple(np.concatenate(a, axis=2) for a in out)


def _piece(inputs, ctx: RuleContext, i: int, rank: int) -> Moments:
    m = inputs[i]
    if m is not None:
        return m
    c = ctx.const(i)
    if c is None:
        raise RuleError(f"input {i} is neither a signal nor constant")
    c = lift(np.asarray(c, dtype=np.float64), rank)
    return Moments(c, np.zeros_like(c))


__all__ = ["concat_channels", "joint_correlation", "positions_binary"]
