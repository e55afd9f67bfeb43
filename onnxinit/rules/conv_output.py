"""A Conv's output from its input's position classes: the statistics per output channel and
class, the output's correlation and cross-channel field, the copied distribution of a copy
kernel. Shared by the Conv rule and the ConvTranspose rule (a stride-1 Conv of the
zero-upsampled input, :mod:`onnxinit.upsampled`)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from .. import correlation
from ..moments import Moments, Spatial
from ..spatial import attach, gather_taps, window, within_variance
from ..views import broadcast_to
from . import cross_fields
from .conv_centring import conv_centred
from .copies import copy_cells

_FLOAT32_ABOVE = 1 << 24  # multiply-adds of a Conv over cells above which it runs in float32


def conv_cells(mu, nu, w, bias, groups, taps):
    """Per output channel and position class (zero padding exact), for independent inputs
    with per-class statistics mu, nu ``[C_in, K_0, ...]``:

        E_j(r)   = b_j + sum_{c in group(j), t: tap t of class r inside} W_jct mu_c(class under t)
        Var_j(r) = sum_{same c, t} W_jct^2 nu_c(class under t)

    one matrix product per group over the gathered taps (im2col over classes, not positions).
    Returns ``[C_out, R_0, ...]`` arrays."""
    c_out, cpg = w.shape[:2]
    cols_m = gather_taps(mu, taps)  # [C_in, T_0.., R_0..]
    cols_v = gather_taps(nu, taps)
    n_taps = int(math.prod([t.shape[1] for t in taps]))
    out_classes = tuple(t.shape[0] for t in taps)
    size = int(math.prod(out_classes))
    wg = w.reshape(groups, c_out // groups, cpg * n_taps)
    cols_m = cols_m.reshape(groups, cpg * n_taps, size)
    cols_v = cols_v.reshape(groups, cpg * n_taps, size)
    if wg.size * size > _FLOAT32_ABOVE:  # large products in float32: 1e-7 relative, 2x faster
        wg32, mean32 = wg.astype(np.float32), cols_m.astype(np.float32)
        mean = (wg32 @ mean32).astype(np.float64).reshape(c_out, size) + bias[:, None]
        var = ((wg32 * wg32) @ cols_v.astype(np.float32)).astype(np.float64).reshape(c_out, size)
        return mean.reshape((c_out, *out_classes)), var.reshape((c_out, *out_classes))
    mean = (wg @ cols_m).reshape(c_out, size) + bias[:, None]
    var = ((wg * wg) @ cols_v).reshape(c_out, size)
    return mean.reshape((c_out, *out_classes)), var.reshape((c_out, *out_classes))


def sparse_tap_cells(mu, nu, w, bias, groups, taps, zeros):
    """:func:`conv_cells` where the input class ``zeros[i]`` along axis i is a point mass at 0
    (a ConvTranspose's inserted zeros, :mod:`onnxinit.upsampled`): the output classes are
    grouped by the taps that read other classes (per axis, a stride's phase and the border's
    patterns), and each group sums those taps alone, which is the same sum without the zero
    terms (a stride-8 kernel of 16 x 16 taps reads 2 x 2 of them per class)."""
    c_out = w.shape[0]
    out_classes = tuple(t.shape[0] for t in taps)
    mean = np.empty((c_out,) + out_classes)
    var = np.empty((c_out,) + out_classes)
    axes = []
    for t, z in zip(taps, zeros):
        patterns, inverse = np.unique((t >= 0) & (t != z), axis=0, return_inverse=True)
        axes.append([(np.flatnonzero(inverse.reshape(-1) == g), np.flatnonzero(p))
                     for g, p in enumerate(patterns)])
    for combo in itertools.product(*axes):
        rows = [r for r, _ in combo]
        at = np.ix_(np.arange(c_out), *rows)
        if any(c.size == 0 for _, c in combo):  # no tap reads an input: the bias alone
            mean[at], var[at] = bias.reshape((-1,) + (1,) * len(rows)), 0.0
            continue
        sub = w
        for a, (_, c) in enumerate(combo):
            sub = sub.take(c, axis=2 + a)
        sub_taps = [t[np.ix_(r, c)] for t, (r, c) in zip(taps, combo)]
        mean[at], var[at] = conv_cells(mu, nu, sub, bias, groups, sub_taps)
    return mean, var


def cell_moments(sp: Spatial, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The input's (mean, var) per channel and class, ``[C_in, K_0, ...]`` each."""
    mu, nu = np.broadcast_arrays(sp.cells.mean, sp.cells.var)
    shape = (channels,) + mu.shape[2:]
    return broadcast_to(mu[0], shape), broadcast_to(nu[0], shape)


def class_windows(sp: Spatial, out_sizes, kernel, strides, dilations, begins):
    """(output maps, taps) per spatial axis (:func:`onnxinit.spatial.window`)."""
    out_maps, taps = [], []
    for d in range(len(kernel)):
        m, t = window(sp.maps[d], out_sizes[d], kernel[d], strides[d], dilations[d], begins[d])
        out_maps.append(m)
        taps.append(t)
    return out_maps, taps


def conv_output(sp: Spatial, w, bias, groups, strides, dilations, begins, out_sizes,
                adjust=None, pairs=None, name: str = "", fork: bool = False,
                covariance_known: bool = False, dense_allowed: bool = False,
                anchors: bool = True, zeros=None) -> Moments:
    """The Conv's output (docstring of ``rules.linear.conv``) from the input's classes ``sp``:
    ``adjust(var)`` the rule's own corrections of the independent-inputs variance per class;
    ``pairs(sp, nu_cells, taps, var)`` another per-class variance from the input's correlation
    (the ConvTranspose's same-channel tap pairs), which a cross-channel field read by
    ``cross_fields.conv`` replaces; ``anchors``: whether the output may carry an anchor (the
    input is the named tensor ``name``, not a zero-upsampled stand-in); ``zeros``: per axis, the
    input class of the zero-upsampled stand-in's inserted zeros (:func:`sparse_tap_cells`)."""
    c_in, kernel = w.shape[1] * groups, w.shape[2:]
    out_maps, taps = class_windows(sp, out_sizes, kernel, strides, dilations, begins)
    mu, nu = cell_moments(sp, c_in)
    if zeros is None:
        mean, var = conv_cells(mu, nu, w, bias, groups, taps)
    else:
        mean, var = sparse_tap_cells(mu, nu, w, bias, groups, taps, zeros)
    if adjust is not None:
        var = adjust(var)
    if pairs is not None:
        var = pairs(sp, nu, taps, var)
    corr_in = sp.corr if sp.corr is not None else correlation.independent(
        1, [m.size for m in sp.maps])
    corr, _ = correlation.conv(corr_in, within_variance(sp, c_in), w, groups, strides,
                               dilations, out_sizes)
    if corr_in.centred is not None and zeros is None:  # a ConvTranspose's stand-in: as before
        in_sizes = [m.size for m in sp.maps]
        centred = conv_centred(
            np.broadcast_to(corr_in.batch_centred(c_in), (c_in,)), within_variance(sp, c_in),
            np.broadcast_to(correlation.mean_variance_factor(corr_in, in_sizes), (c_in,)), w,
            groups, strides, dilations, begins, in_sizes, out_sizes)
        if centred is not None:
            corr = corr.with_centred(centred)
    cells = copy_cells(sp, w, bias, groups, taps, mean, var)
    var, corr = cross_fields.conv(sp, nu, w, groups, strides, dilations, taps, var, corr,
                                  chained=cells is not None and cells.source is not None,
                                  name=name, begins=begins, fork=fork,
                                  covariance_known=covariance_known,
                                  dense_allowed=dense_allowed, anchors=anchors)
    if cells is None:
        cells = Moments(mean[None], var[None])
    return attach(cells, out_maps, corr)


__all__ = ["cell_moments", "class_windows", "conv_cells", "conv_output", "sparse_tap_cells"]
