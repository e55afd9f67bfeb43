"""Whether an element-wise chain is non-decreasing over each Gaussian's range (the max pools'
condition: ``max_i f(z_i) = f(max_i z_i)`` for a non-decreasing f)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..moments import Elementwise
from .gaussian import compose
from .maxima import SPAN

_ROWS = 1 << 21  # elements of the [points, *shape] arrays f is evaluated on at once


def non_decreasing(chain: Sequence[Elementwise], mean: np.ndarray, var: np.ndarray) -> bool:
    """Whether the chain is non-decreasing over each Gaussian's +-6 standard deviations
    (checked on 97 points per tracked index)."""
    if not chain:
        return True
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    z = np.linspace(-SPAN, SPAN, 97).reshape((-1,) + (1,) * mean.ndim)
    fn, std = compose(chain), np.sqrt(var)
    # a few points at a time (never the [97, *shape] array): each step's least value and
    # each index's largest |value| over the points, then the test on those
    rows = max(2, _ROWS // max(1, mean.size))
    least = biggest = last = None
    with np.errstate(all="ignore"):
        for i in range(0, z.shape[0], rows):
            values = np.asarray(fn(mean + std * z[i:i + rows]), dtype=np.float64)
            if values.ndim != mean.ndim + 1 or values.shape[0] != min(rows, z.shape[0] - i):
                return _non_decreasing_whole(fn, mean, std, z)  # f does not map point by point
            if not np.all(np.isfinite(values)):
                return False
            top = np.abs(values).max(axis=0)
            biggest = top if biggest is None else np.maximum(biggest, top)
            step = np.diff(values if last is None else np.concatenate([last, values]), axis=0)
            if step.shape[0]:
                low = step.min(axis=0)
                least = low if least is None else np.minimum(least, low)
            last = values[-1:]
    return least is None or bool(np.all(least >= -1e-9 * (biggest + 1e-300)))


def _non_decreasing_whole(fn, mean, std, z) -> bool:
    """:func:`non_decreasing` on all the points at once."""
    with np.errstate(all="ignore"):
        values = np.asarray(fn(mean + std * z), dtype=np.float64)
    if not np.all(np.isfinite(values)):
        return False
    step = np.diff(values, axis=0)
    scale = np.abs(values).max(axis=0, keepdims=True) + 1e-300
    return bool(np.all(step >= -1e-9 * scale))


__all__ = ["non_decreasing"]
