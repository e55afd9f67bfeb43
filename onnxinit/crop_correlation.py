"""The spatial correlation of a map cropped along one axis (Slice, Split of a spatial axis).

A contiguous crop (step 1) of a stationary field keeps the correlation of every pair of
positions it keeps: ``rho_c(d)`` and the per-sample ``floor_c`` are the same, only the stored
window shrinks to ``|d| <= min(MAX_OFFSET, n - 1)`` along the cropped axis (n its new size); the
source Gaussian's pair likewise. Not carried: the channels' cross field (its own window; the
crop then reads the channels as independent, as it did before) and the batch-centred fraction
(a crop's spatial mean is not the mean BatchNorm centred: unknown, 0). A strided or reordered
selection, or a map too small for the window, keeps no correlation (None), as before.
"""

from __future__ import annotations

import numpy as np

from .correlation import MAX_OFFSET, Correlation, recentred


def cropped(corr: Correlation | None, axis: int, indices: np.ndarray) -> Correlation | None:
    """``corr`` of a map whose spatial ``axis`` (counted from 0 among the spatial axes) keeps
    ``indices``; None where that is no contiguous run."""
    if corr is None or indices.size == 0:
        return None
    if np.any(np.diff(indices) != 1):
        return None
    radius = list(corr.radius)
    if axis >= len(radius):
        return None
    radius[axis] = min(radius[axis], MAX_OFFSET, int(indices.size) - 1)
    rho = recentred(corr.rho, 1, radius, 0.0)
    gauss = None
    if corr.gauss is not None:
        g_rho, g_floor = corr.gauss
        gauss = (recentred(g_rho, 1, radius, 0.0), g_floor)
    return Correlation(rho, corr.floor, gauss, None, None, False, corr.energy_pairs)


__all__ = ["cropped"]
