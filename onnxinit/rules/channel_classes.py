"""A mean (sum) over the channels of a map, per position class.

A LayerNorm over the channels of an ``[N, C, *S]`` map (tf2onnx writes Keras' over NHWC's last
axis as ``ReduceMean`` over axis 1 of the NCHW Conv output) reduces each position's C values. A
zero-padded Conv's border positions have fewer taps, so other means and a smaller variance (the
position classes, :class:`~onnxinit.moments.Spatial`), for every channel at once. The
reduction's generic rule divided each channel's total variance by C, the spread of the position
means included; but that spread is common to the channels of one position and does not average
out. Per position class r (``onnxinit.spatial``):

    E_r   = mean_c E_cr                 (ReduceSum: C times)
    Var_r = F mean_c Var_cr / C         (ReduceSum: C^2 times)

with F the channels' correlation factor the generic rule applies (1 for independent channels),
and the totals over the classes by the law of total variance (``spatial.attach``), which
carries the classes on; a mean of squares takes each class's scaled chi-square
(:func:`.chi_square.chi_square`, as the generic rule's readers rebuild it), so that the
statistic's square root and reciprocal see a border position's smaller variance (Keras'
``LayerNormalization()`` on a ReLU Conv map: the corner's ``1 / sqrt(var + eps)`` 1.8x the
interior's).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..spatial import attach
from ..views import broadcast_to
from .chi_square import chi_square


def channel_classes(x: Moments, x_shape, axes: tuple[int, ...], keepdims: bool, factor,
                    k: int, op: str, squares: bool) -> Moments | None:
    """ReduceMean / ReduceSum of ``x`` over its channel axis alone (module docstring), per
    position class; None unless x carries position classes and the output keeps the axis.
    ``squares``: x is a square, each class's law the scaled chi-square of its moments."""
    sp = x.spatial
    if sp is None or tuple(axes) != (1,) or not keepdims or len(x_shape) < 3:
        return None
    if op not in ("ReduceMean", "ReduceSum") or k != x_shape[1]:
        return None
    cells = sp.cells.expand_rank(len(x_shape))
    shape = (1, x_shape[1], *sp.classes)
    if cells.rank != len(x_shape):
        return None
    mean = broadcast_to(cells.mean, np.broadcast_shapes(cells.mean.shape, shape))
    var = broadcast_to(cells.var, np.broadcast_shapes(cells.var.shape, shape))
    f = 1.0 if factor is None else np.asarray(factor, dtype=np.float64)
    m = mean.mean(axis=1, keepdims=True)
    v = f * var.mean(axis=1, keepdims=True) / k
    if op == "ReduceSum":
        m, v = k * m, k * k * v
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v))):
        return None
    cells = Moments(m, v)
    return attach(chi_square(cells, len(x_shape)) if squares else cells, sp.maps)


__all__ = ["channel_classes"]
