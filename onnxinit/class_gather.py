"""Statistics of position classes gathered under a window's taps (:func:`gather_taps`): what a
Conv, a pool or a field reads per output class (:mod:`onnxinit.spatial` makes the windows)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def gather_taps(arr: np.ndarray, taps: Sequence[np.ndarray], fill: float = 0.0) -> np.ndarray:
    """``arr[..., K_0, ..., K_{n-1}]`` gathered under window taps: ``[..., T_0, ..., T_{n-1},
    R_0, ..., R_{n-1}]`` with element (t, r) = arr at class ``taps[i][r_i, t_i]`` per axis
    (``fill`` where a tap is in the padding)."""
    n = len(taps)
    lead = arr.ndim - n
    if all(_one_tap_each(t, k) for t, k in zip(taps, arr.shape[lead:])):
        return _copied_as_gathered(arr, n)
    return _gathered(arr, taps, fill)


def _copied_as_gathered(arr: np.ndarray, n: int) -> np.ndarray:
    """``arr`` ``[..., K_0, ..., K_{n-1}]`` as :func:`_gathered` lays out the gather of one
    tap per class in order (a 1x1 window without padding): ``[..., 1 (x n), K_0, ...]``, a
    fresh array whose leading axes vary fastest in memory, as numpy's gather leaves them (the
    matrix products that read it get the same layout, so the same sums), by one copy."""
    lead = arr.ndim - n
    out = np.empty((1,) * n + arr.shape[lead:] + arr.shape[:lead], dtype=arr.dtype)
    out[...] = np.moveaxis(arr, tuple(range(lead)), tuple(range(arr.ndim - lead, arr.ndim)))[
        (None,) * n]
    return np.moveaxis(out, tuple(range(out.ndim - lead, out.ndim)), tuple(range(lead)))


def _gathered(arr: np.ndarray, taps: Sequence[np.ndarray], fill: float) -> np.ndarray:
    n = len(taps)
    lead = arr.ndim - n
    padded = np.full(arr.shape[:lead] + tuple(k + 1 for k in arr.shape[lead:]), fill,
                     dtype=arr.dtype)
    padded[(Ellipsis, *(slice(0, k) for k in arr.shape[lead:]))] = arr
    index = []
    for i, t in enumerate(taps):
        k = arr.shape[lead + i]
        idx = np.where(t < 0, k, t).T  # [T_i, R_i]
        shape = [1] * (2 * n)
        shape[i], shape[n + i] = idx.shape
        index.append(idx.reshape(shape))
    return padded[(Ellipsis, *index)]


def _one_tap_each(taps: np.ndarray, classes: int) -> bool:
    """``taps`` ``[R, 1]`` read class r at output class r, for all ``classes`` of the axis."""
    return (taps.shape == (classes, 1) and bool((taps[:, 0] == np.arange(classes)).all()))


__all__ = ["gather_taps"]
