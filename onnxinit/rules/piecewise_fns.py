"""Element-wise functions that are piecewise polynomials of degree <= 2 (HardSigmoid,
HardSwish, ThresholdedRelu, Shrink, Clip): closed forms on a Gaussian for their moments
(:func:`.gaussian.piecewise_closed`) and their Hermite amplitudes."""

from __future__ import annotations

from functools import partial

import numpy as np

from .elementwise import ElementwiseFn, digest
from .gaussian import piecewise_closed


def piecewise_fn(key: tuple, fn, pieces) -> ElementwiseFn:
    """An element-wise function that is a piecewise polynomial of degree <= 2 (``pieces``,
    None when it is not one for these attributes): closed forms on a Gaussian for its
    moments (``piecewise_closed``) and its Hermite amplitudes (``mehler``)."""
    if pieces is None:
        return ElementwiseFn(key, fn)
    return ElementwiseFn(key, fn, closed=partial(piecewise_closed, pieces),
                         pieces=tuple(pieces))


def clip_pieces(lo, hi):
    """clip(x, lo, hi) as pieces: lo below lo, x up to hi, hi above; None where a bound is
    infinite in part only or lo > hi (the output is then hi everywhere)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if np.any(lo > hi):
        return None
    pieces = [(lo, hi, (0.0, 1.0, 0.0))]
    for bound, side in ((lo, -np.inf), (hi, np.inf)):
        if np.all(np.isfinite(bound)):
            piece = (side, bound) if side < 0 else (bound, side)
            pieces.append((*piece, (bound, 0.0, 0.0)))
        elif not np.all(bound == side):
            return None
    return pieces


def clip_fn(lo, hi) -> ElementwiseFn:
    return piecewise_fn(("Clip", *digest(lo), *digest(hi)),
                      lambda x: np.minimum(np.maximum(x, lo), hi), clip_pieces(lo, hi))


__all__ = ["clip_fn", "clip_pieces", "piecewise_fn"]
