"""Resize / Upsample (nearest, linear) of a map in convolution layout, with its position
classes and its spatial correlation (issue 10: a decoder's upsampling of a smooth map).

Along each spatial axis the resize is an interpolation: output index o reads taps ``i_t(o)``
with weights ``a_t(o)`` (ONNX's coordinate transforms; nearest: one tap at the index its
nearest mode picks; linear: ``1 - f`` at ``floor(x)`` and ``f`` at ``floor(x) + 1``, x clipped
to ``[0, in - 1]``). Output index o's class along an axis is its taps' signature (input class,
weight, offset from the first tap), so the statistics per output cell (one class per axis,
the axes separable) are exact for the input's classes and correlation::

    E(r)   = sum_t a_t mu(c_t)
    Var(r) = sum_{t, t'} a_t a_t' sd(c_t) sd(c_t') rho(i_t' - i_t)

A nearest resize copies: its cells are the input's (source and mixture kept). A linear one
averages neighbours, so its variance is below the input's by an amount set by their
correlation (0.5-0.6x for a box-filtered map; the measured fallback took the neighbours as
independent).

The output's correlation, averaged over its positions (as a ConvTranspose's over the stride's
phases, :mod:`onnxinit.upsampled`)::

    Cov(d) = nu sum_Delta K_0(d_0, Delta_0) ... K_{n-1}(d_{n-1}, Delta_{n-1}) rho(Delta)
    K_a(d, Delta) = mean_o sum_{t, t': i_t'(o + d) - i_t(o) = Delta} a_t(o) a_t'(o + d)

normalised by Cov(0); the per-sample component ``floor`` passes as ``floor nu / Cov(0)`` (the
weights of a position sum to 1). Nearest doubling makes neighbours identical copies: rho 0.5
at offset 1 from independent inputs, which a pool or a conv after it reads. A nearest resize
moves the cross-channel field and the Gaussian's correlation the same way (a copy); a linear
one keeps the per-channel correlation only. Other modes (cubic, antialiased downsampling, a
crop box) are not modelled here (None).
"""

from __future__ import annotations

import itertools

import numpy as np

from ..correlation import MAX_OFFSET, Correlation, independent, recentred
from ..cross_channel import CrossField
from ..moments import Moments
from ..spatial import attach, positions, take_cells
from .context import RuleContext

_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_half_pixel_for_nn")


def _source_coordinate(o: np.ndarray, in_size: int, out_size: int, scale: float, mode: str):
    """ONNX Resize's ``coordinate_transformation_mode``: the input coordinate of output o."""
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if out_size > 1 else np.zeros_like(o, dtype=np.float64)
    if mode == "align_corners":
        return o * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros_like(
            o, dtype=np.float64)
    if mode == "asymmetric":
        return o / scale
    return (o + 0.5) / scale  # tf_half_pixel_for_nn


def _nearest(x: np.ndarray, mode: str) -> np.ndarray:
    """ONNX Resize's ``nearest_mode``."""
    if mode == "floor":
        return np.floor(x)
    if mode == "ceil":
        return np.ceil(x)
    half = np.isclose(x - np.floor(x), 0.5)
    if mode == "round_prefer_ceil":
        return np.where(half, np.ceil(x), np.round(x))
    return np.where(half, np.floor(x), np.round(x))  # round_prefer_floor


def axis_taps(in_size: int, out_size: int, scale: float, mode: str, transform: str,
              nearest_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(index ``[out, T]``, weight ``[out, T]``) of one axis: T = 1 (nearest) or 2 (linear)."""
    o = np.arange(out_size, dtype=np.float64)
    x = _source_coordinate(o, in_size, out_size, scale, transform)
    if mode == "nearest":
        i = np.clip(_nearest(x, nearest_mode), 0, in_size - 1).astype(np.int64)
        return i[:, None], np.ones((out_size, 1))
    x = np.clip(x, 0, in_size - 1)
    lo = np.floor(x).astype(np.int64)
    f = x - lo
    hi = np.minimum(lo + 1, in_size - 1)
    return np.stack([lo, hi], axis=1), np.stack([1 - f, f], axis=1)


def _axis_classes(in_map: np.ndarray, index: np.ndarray, weight: np.ndarray):
    """Output classes along one axis: (out_map, per class: input classes ``[R, T]``, weights
    ``[R, T]``, tap offsets from the first ``[R, T]``)."""
    offsets = index - index[:, :1]
    signature = np.concatenate([in_map[index], np.round(weight, 12), offsets], axis=1)
    _, first, out_map = np.unique(signature, axis=0, return_index=True, return_inverse=True)
    return (out_map.reshape(-1), in_map[index[first]], weight[first], offsets[first])


def _lag_kernel(index: np.ndarray, weight: np.ndarray, radius: int) -> tuple[np.ndarray, int]:
    """``K(d, Delta)`` ``[2 radius + 1, 2 L + 1]`` (module docstring) and L, the largest
    |Delta| it reaches."""
    out = index.shape[0]
    rows = []
    for d in range(-radius, radius + 1):
        o = np.arange(max(0, -d), min(out, out - d))
        deltas = (index[o + d][:, None, :] - index[o][:, :, None]).reshape(-1)
        products = (weight[o][:, :, None] * weight[o + d][:, None, :]).reshape(-1)
        rows.append((deltas, products / max(o.size, 1)))
    reach = max(int(np.abs(d).max(initial=0)) for d, _ in rows)
    k = np.zeros((2 * radius + 1, 2 * reach + 1))
    for r, (deltas, products) in enumerate(rows):
        np.add.at(k[r], deltas + reach, products)
    return k, reach


def _transformed(field: np.ndarray, lead: int, floor, kernels, reaches) -> np.ndarray:
    """``sum_Delta prod_a K_a(d_a, Delta_a) field(Delta)`` over the trailing offset axes."""
    out = recentred(field, lead, reaches, floor)
    for a, k in enumerate(kernels):
        out = np.moveaxis(np.tensordot(out, k, axes=([lead + a], [1])), -1, lead + a)
    return out


def resized(x: Moments, ctx: RuleContext) -> Moments | None:
    """The Resize / Upsample of ``x`` (module docstring), or None where it does not apply
    (the batch or channel axis resized, another mode, a crop box, antialiasing)."""
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    rank = len(in_shape)
    mode = ctx.attr("mode", "nearest")
    if rank < 3 or tuple(in_shape[:2]) != tuple(out_shape[:2]) or mode not in ("nearest",
                                                                               "linear"):
        return None
    if ctx.node.op_type == "Upsample" or ctx.opset < 11:
        transform, nearest_mode = "asymmetric", "floor"
    else:
        transform = ctx.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = ctx.attr("nearest_mode", "round_prefer_floor")
        if ctx.attr("antialias", 0) or ctx.attr("axes") is not None \
                or ctx.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            return None
    if transform not in _TRANSFORMS:
        return None
    scales = _scales(ctx, rank)
    sp = positions(x, in_shape)
    if sp is None:
        return None
    axes = []
    for d in range(rank - 2):
        n_in, n_out = in_shape[2 + d], out_shape[2 + d]
        scale = scales[2 + d] if scales is not None else n_out / n_in
        axes.append(axis_taps(n_in, n_out, scale, mode, transform, nearest_mode))
    classes = [_axis_classes(np.asarray(m), i, w) for m, (i, w) in zip(sp.maps, axes)]
    radius = [min(MAX_OFFSET, n - 1) for n in out_shape[2:]]
    lags = [_lag_kernel(i, w, r) for (i, w), r in zip(axes, radius)]
    kernels, reaches = [k for k, _ in lags], [r for _, r in lags]
    corr = sp.corr if sp.corr is not None else independent(1, in_shape[2:])
    if mode == "nearest":
        cells = take_cells(sp.cells, [c[1][:, 0] for c in classes])
        return attach(cells, [c[0] for c in classes], _copied(corr, kernels, reaches))
    return attach(_linear_cells(sp, in_shape[1], corr, classes), [c[0] for c in classes],
                  _averaged(corr, kernels, reaches))


def _scales(ctx: RuleContext, rank: int):
    """The ``scales`` input (or attribute) when given for every axis, else None."""
    index = 2 if ctx.node.op_type == "Resize" and ctx.opset >= 11 else 1
    scales = ctx.const(index) if len(ctx.node.input) > index and ctx.node.input[index] else None
    if scales is None:
        scales = ctx.attr("scales")
    scales = None if scales is None else np.asarray(scales, np.float64).reshape(-1)
    return scales if scales is not None and scales.size == rank else None


def _copied(corr: Correlation, kernels, reaches) -> Correlation:
    """The correlation of a nearest resize's copies: the kernels applied to every field (the
    copies' variance is the input's: ``K(0, Delta)`` is 1 at 0)."""
    rho = _transformed(corr.rho, 1, np.reshape(corr.floor, -1), kernels, reaches)
    gauss = None
    if corr.gauss is not None:
        g_rho, g_floor = corr.gauss
        gauss = (_transformed(g_rho, 1, np.reshape(g_floor, -1), kernels, reaches), g_floor)
    cross = corr.cross
    if cross is not None:
        moved = _transformed(cross.corr, 2, 0.0, kernels, reaches)
        moved_gauss = None if cross.gauss is None else _transformed(cross.gauss, 2, 0.0,
                                                                    kernels, reaches)
        cross = CrossField(moved, moved_gauss)
        rho = cross.diagonal()
    centre = (slice(None),) + tuple((s - 1) // 2 for s in rho.shape[1:])
    rho[centre] = 1.0
    return Correlation(np.clip(rho, -1, 1), corr.floor, gauss, corr.centred, cross,
                       corr.normalized, corr.energy_pairs)


def _averaged(corr: Correlation, kernels, reaches) -> Correlation:
    """The correlation of a linear resize: the covariance by the kernels, normalised by its
    value at offset 0 (the interpolation's variance); the per-channel correlation only."""
    cov = _transformed(corr.rho, 1, np.reshape(corr.floor, -1), kernels, reaches)
    centre = (slice(None),) + tuple((s - 1) // 2 for s in cov.shape[1:])
    var = cov[centre].copy()
    safe = np.where(var > 0, var, 1.0)
    rho = cov / safe.reshape((-1,) + (1,) * (cov.ndim - 1))
    rho[centre] = 1.0
    floor = np.clip(np.reshape(corr.floor, -1) / safe, -1, 1)
    return Correlation(np.clip(rho, -1, 1), floor, None, corr.centred)


def _linear_cells(sp, channels: int, corr: Correlation, classes):
    """Per output cell the interpolation's mean and variance (module docstring)."""
    mean, var = np.broadcast_arrays(sp.cells.mean, sp.cells.var)
    full = (1, channels) + sp.classes
    mu = np.broadcast_to(mean, np.broadcast_shapes(mean.shape, full))[0]
    sd = np.sqrt(np.broadcast_to(var, np.broadcast_shapes(var.shape, full))[0])
    c = mu.shape[0]
    reach = [int(np.abs(cl[3]).max(initial=0)) for cl in classes]
    rho = recentred(corr.rho, 1, reach, np.reshape(corr.floor, -1))
    rho = np.broadcast_to(rho, (c,) + rho.shape[1:])
    out_classes = tuple(cl[1].shape[0] for cl in classes)
    out_mean = np.zeros((c,) + out_classes)
    out_var = np.zeros((c,) + out_classes)
    for cell in itertools.product(*(range(k) for k in out_classes)):
        taps = list(itertools.product(*(range(cl[1].shape[1]) for cl in classes)))
        cls = [tuple(classes[a][1][cell[a], t[a]] for a in range(len(cell))) for t in taps]
        wts = np.array([np.prod([classes[a][2][cell[a], t[a]] for a in range(len(cell))])
                        for t in taps])
        offs = [tuple(classes[a][3][cell[a], t[a]] for a in range(len(cell))) for t in taps]
        at = (slice(None),) + cell
        out_mean[at] = sum(w * mu[(slice(None),) + k] for w, k in zip(wts, cls))
        total = 0.0
        for (w1, k1, o1), (w2, k2, o2) in itertools.product(zip(wts, cls, offs), repeat=2):
            lag = tuple(b - a + r for a, b, r in zip(o1, o2, reach))
            total = total + w1 * w2 * sd[(slice(None),) + k1] * sd[(slice(None),) + k2] \
                * rho[(slice(None),) + lag]
        out_var[at] = np.maximum(total, 0.0)
    return Moments(out_mean[None], out_var[None])


__all__ = ["axis_taps", "resized"]
