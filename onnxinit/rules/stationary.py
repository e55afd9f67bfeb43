"""Whether a tensor's position classes describe one stationary field, which the global pool's
non-Gaussian terms (:mod:`.pool_skewness`, :mod:`.sample_energy`) assume."""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..spatial import class_weights

# the spread of the position classes' source means, over their mean variance, up to which an
# input counts as stationary (its per-channel source describes every position): the border
# classes of zero-padded convs spread 0.01-1.1 (MobileNetV3, EfficientNet; torchvision and
# Keras); a nearly constant input (Keras' Rescaling on N(0, 1)) gives 1.5e3
_SPREAD = 10.0


def stationary(m: Moments, rank: int) -> bool:
    """True unless m's position classes have source Gaussians whose means spread by more than
    ``_SPREAD`` times their variance (weighted by the classes' shares) in some channel: the
    pool terms (pool_skewness, sample_energy) are for one stationary field, and a border pattern that dominates a channel
    (a nearly constant input's zero padding) pooled into the per-channel source would be read
    as fluctuation (34x the measured pooled variance on Keras' MobileNetV3Small)."""
    sp = m.spatial
    src = None if sp is None else sp.cells.source
    if src is None:
        return True
    mean = np.asarray(src.mean, dtype=np.float64)
    var = np.asarray(src.var, dtype=np.float64)
    if mean.ndim != rank or var.ndim != rank:
        return True
    shape = np.broadcast_shapes(mean.shape, var.shape, (1, 1, *sp.classes))
    w = class_weights(sp.maps)
    mean, var = np.broadcast_to(mean, shape)[0], np.broadcast_to(var, shape)[0]
    axes = tuple(range(1, mean.ndim))
    centre = (mean * w).sum(axis=axes, keepdims=True)
    spread = (((mean - centre) ** 2) * w).sum(axis=axes)
    within = (var * w).sum(axis=axes)
    return bool(np.all(spread <= _SPREAD * within))


__all__ = ["stationary"]
