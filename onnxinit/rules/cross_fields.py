"""The cross-channel correlation field (``onnxinit.cross_channel``) in the rules: created and
carried by a Conv with a sparse kernel, carried by element-wise functions and independent sums,
and read back as the Conv's output variance per position class and the per-channel correlation
(its diagonal). Each function returns what the rule computed without the field when the field
does not apply, so a rule's result changes only where the field exists."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import correlation, cross_channel
from ..correlation import Correlation
from ..cross_channel import CrossField
from ..spatial import gather_taps, within_variance


def _input_field(corr_in: Correlation | None, channels: int, sizes) -> CrossField:
    """The input's field; channels independent of each other when it carries none."""
    if corr_in is not None and corr_in.cross is not None:
        return corr_in.cross
    corr_in = corr_in if corr_in is not None else correlation.independent(1, sizes)
    gauss = None
    if corr_in.gauss is not None:
        gauss = cross_channel.from_diagonal(corr_in.gauss[0], channels)
    return CrossField(cross_channel.from_diagonal(corr_in.rho, channels), gauss)


def conv(sp, nu_cells: np.ndarray, w: np.ndarray, groups: int, strides, dilations, taps,
         var: np.ndarray, corr: Correlation, chained: bool) -> tuple[np.ndarray, Correlation]:
    """A Conv's per-class output variance ``var`` ``[C_out, R...]`` and correlation ``corr``
    with the cross-channel field when the kernel is sparse (``cross_channel.sparse_kernel``);
    unchanged otherwise. ``nu_cells`` ``[C_in, K...]``: the input's variance per class;
    ``chained``: the output keeps the input's element-wise chain (a copy), so the field of
    its Gaussian is the input's Gaussian's, moved like the values."""
    kern = cross_channel.sparse_kernel(w, groups)
    if kern is None:
        return var, corr
    c_in = w.shape[1] * groups
    field = _input_field(sp.corr, c_in, [m.size for m in sp.maps])
    if field.corr.shape[0] != c_in:
        return var, corr
    nu = within_variance(sp, c_in)
    cov = cross_channel.conv_covariance(field.corr, nu, kern, strides, dilations, corr.radius)
    out, _ = cross_channel.normalised(cov)
    sd_taps = gather_taps(np.sqrt(nu_cells), taps)
    var = cross_channel.class_variance(field.corr, sd_taps, kern, dilations)
    gauss, gauss_pair = None, corr.gauss
    if chained and kern.copies:
        moved = cross_channel.conv_covariance(field.gaussian(), np.ones(c_in), kern, strides,
                                              dilations, corr.radius, magnitudes=True)
        gauss = cross_channel.normalised(moved)[0]
        gauss_pair = (CrossField(gauss).diagonal(), corr.floor)
    cross = CrossField(out, gauss)
    return var, replace(corr, rho=cross.diagonal(), gauss=gauss_pair, cross=cross)


def elementwise(corr: Correlation, amplitudes: np.ndarray, variance: np.ndarray,
                rho: Correlation) -> Correlation:
    """``rho`` (the per-channel correlation of f(z)) with the field of f(z) by Mehler's
    formula per pair of channels, when ``corr`` (z's correlation) carries one."""
    cross = corr.cross
    if cross is None or cross.corr.shape[0] != amplitudes.shape[1]:
        return rho
    gauss = cross_channel.cropped(cross.gaussian(), rho.radius)
    return replace(rho, cross=CrossField(cross_channel.mehler(gauss, amplitudes, variance),
                                         gauss))


def affine(corr: Correlation, scale) -> Correlation:
    """The correlation of ``a x + b`` with per-channel ``a`` (layout ``[1, C, 1...]`` or a
    scalar) when the values' field is carried unchanged: pairs of opposite signs flip."""
    if corr.cross is None:
        return corr
    a = np.asarray(scale, dtype=np.float64)
    channels = corr.cross.corr.shape[0]
    if a.ndim < 2 or a.shape[1] == 1:
        sign = np.full(channels, np.sign(a.reshape(-1)[0]) if a.size else 1.0)
    elif any(n > 1 for n in a.shape[2:]) or a.shape[1] != channels:
        return replace(corr, cross=None)
    else:
        sign = np.sign(a.reshape(a.shape[:2])[0])
    return replace(corr, cross=cross_channel.signed(corr.cross, sign))


def add(out: Correlation, parts, channels: int, sizes) -> Correlation:
    """The field of a sum of independent operands, ``parts`` ``(Correlation, nu [C], signal)``
    (a constant: nu 0), added to ``out`` when an operand carries one and every signal operand
    has a per-position correlation of ``channels`` channels."""
    if not any(c.cross is not None for c, _, _ in parts):
        return out
    fields = []
    for corr, nu, is_signal in parts:
        if not is_signal:
            continue
        if corr.rho.shape[0] not in (1, channels) or corr.rho.ndim != 1 + len(sizes):
            return out
        field = (corr.cross.corr if corr.cross is not None
                 else cross_channel.from_diagonal(corr.rho, channels))
        if field.shape[0] != channels:
            return out
        fields.append((field, np.broadcast_to(nu, (channels,))))
    total = cross_channel.add(fields, out.radius)
    return replace(out, rho=CrossField(total).diagonal(), cross=CrossField(total))


__all__ = ["add", "affine", "conv", "elementwise"]
