"""Convolutions that copy: every output channel one scaled input channel at one tap.

IDInit's Dirac pattern and its tall patch-maintain identity give ``y_j(p) = a_j x_c(j)(p s - pad
+ t(j) dil)``: each output is a scaled, shifted copy of an input channel, so its distribution is
the input's own, not the Gaussian a sum of many terms tends to. A ReLU after such a copy of a
ReLU output changes nothing, which a Gaussian description would get wrong. This module gives
the Conv rule the copied description per output cell: the input cell's source (its Gaussian and
element-wise chain, then ``a_j x``) or its Gaussian mixture, gathered to the output channel and
position class. Positions whose tap falls in the zero padding hold exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..moments import Elementwise, Moments, Source, Spatial
from .elementwise import digest
from .gaussian import compose


def _channel_free(keys) -> bool:
    """No per-element array in the chain (an array digest is a (shape, hash) tuple), so the
    chain means the same function for every channel and can follow a channel permutation."""
    for key in keys:
        for part in key:
            if isinstance(part, tuple) and (len(part) == 2 and isinstance(part[0], tuple)
                                            or not _channel_free([part])):
                return False
    return True


def copy_cells(sp: Spatial, w: np.ndarray, bias: np.ndarray, groups: int,
               taps: Sequence[np.ndarray], mean: np.ndarray, var: np.ndarray) -> Moments | None:
    """The output cells ``[1, C_out, R...]`` with mean/var (computed by the Conv rule) and the
    copied distribution, or None when the kernel is not a copy (a row with other than one
    non-zero, a non-zero bias) or the input is described as a Gaussian anyway."""
    cells = sp.cells
    if cells.source is None and cells.mixture is None:
        return None
    c_out, cpg = w.shape[:2]
    kernel = w.shape[2:]
    flat = w.reshape(c_out, -1)
    nonzero = flat != 0
    if not np.all(nonzero.sum(axis=1) == 1) or np.any(bias != 0):
        return None
    index = nonzero.argmax(axis=1)
    scale = flat[np.arange(c_out), index]
    channel = (np.arange(c_out) // (c_out // groups)) * cpg + index // int(np.prod(kernel))
    tap = np.unravel_index(index % int(np.prod(kernel)), kernel)
    # per output channel j and class r along each axis: the input class under j's tap
    classes = [t[:, tap_d].T for t, tap_d in zip(taps, tap)]  # [C_out, R_d]
    n = len(taps)
    padded = np.zeros((c_out, *(c.shape[1] for c in classes)), dtype=bool)
    for d, c in enumerate(classes):
        shape = [c_out] + [1] * n
        shape[1 + d] = c.shape[1]
        padded |= (c < 0).reshape(shape)

    def gather(arr, lead=0):
        """arr laid out like the cells (``lead`` leading component axes) -> [.., 1, C_out, R..]"""
        arr = np.asarray(arr, np.float64)
        arr = arr.reshape(arr.shape[:lead] + (1,) * (lead + 2 + n - arr.ndim) + arr.shape[lead:])
        index = [slice(None)] * (lead + 1)
        index.append((channel if arr.shape[lead + 1] > 1 else 0 * channel).reshape(
            [c_out] + [1] * n))
        for d, c in enumerate(classes):
            shape = [c_out] + [1] * n
            shape[1 + d] = c.shape[1]
            index.append((np.where(c >= 0, c, 0) if arr.shape[lead + 2 + d] > 1 else 0 * c)
                         .reshape(shape))
        return arr[tuple(index)]

    a = scale.reshape((1, c_out) + (1,) * n)
    source, mixture = None, None
    if cells.source is not None:
        chain = cells.source.chain
        if not _channel_free([f.key for f in chain]):
            return None
        zero = float(np.asarray(compose(chain)(np.zeros(1)))[0])
        if np.any(padded) and zero != 0.0:
            return None
        m = np.where(padded, 0.0, gather(cells.source.mean))
        v = np.where(padded, 0.0, gather(cells.source.var))
        scaled = Elementwise(("Affine", "copy", *digest(a)), lambda x: a * x)
        source = Source(m, v, chain + (scaled,))
    else:
        wts, ms, vs = cells.mixture
        mixture = (gather(wts, 1), np.where(padded, 0.0, gather(ms, 1)) * a,
                   np.where(padded, 0.0, gather(vs, 1)) * a * a)
    return Moments(mean[None], var[None], source, mixture)


__all__ = ["copy_cells"]
