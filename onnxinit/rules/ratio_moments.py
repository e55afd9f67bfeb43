"""The moments of a ratio's derivatives over joint draws of its operands, recorded by the
forward (:mod:`.joint_samples`, where a Div's operands share region ancestry) for the backward
rule of the Div (:mod:`onnxinit.gradrules.joint_ratio`). For ``y = a / b``:

    dy/da = 1 / b:        E[1/b], E[1/b^2]
    dy/db = -a / b^2:     -E[a / b^2], E[a^2 / b^4]

per cell, the draws' sample axis (0) averaged, recorded per graph and Div output with the
forward Moments of that output (a later propagation of other weights replaces them). The
forward moments of a and b alone do not give these: a positive denominator (a sum of
exponentials, >= 1 in RWKV's WKV recurrence) described by its mean and variance has Gaussian
(or gamma) mass near 0, where ``b^-4`` has no finite mean; and a and b share their weights.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..moments import Moments

_RECORDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {output: ...}


def _lift(a: np.ndarray, rank: int) -> np.ndarray:
    """``[n, *grid]`` draws with the grid padded on the left to ``rank`` axes."""
    missing = rank - (a.ndim - 1)
    return a.reshape((a.shape[0],) + (1,) * missing + a.shape[1:]) if missing > 0 else a


def ratio_moments(a: np.ndarray, b: np.ndarray, rank: int) -> tuple[np.ndarray, ...] | None:
    """``(E[1/b], E[1/b^2], -E[a/b^2], E[a^2/b^4])`` per cell of ``[n, *grid]`` joint draws
    (rank ``rank`` without the sample axis); None where one is not finite (a draw of b at 0)."""
    a, b = (_lift(np.asarray(x, np.float64), rank) for x in (a, b))
    with np.errstate(all="ignore"):
        inv = 1.0 / b
        inv2 = inv * inv
        found = (inv.mean(axis=0), inv2.mean(axis=0), -(a * inv2).mean(axis=0),
                 (a * a * inv2 * inv2).mean(axis=0))
    if not all(np.all(np.isfinite(f)) for f in found):
        return None
    return found


def record(graph, output: str, moments: Moments, found) -> None:
    """Keep ``found`` (:func:`ratio_moments`' answer) for the Div ``output`` of ``graph``."""
    _RECORDS.setdefault(graph, {})[output] = (moments, found)


def recorded(graph, output: str, moments: Moments | None) -> tuple[np.ndarray, ...] | None:
    """The ratio moments recorded for ``output`` while its forward Moments were ``moments``
    (the same values), else None."""
    kept = _RECORDS.get(graph, {}).get(output)
    if kept is None or moments is None or kept[1] is None:
        return None
    then, found = kept
    if moments is not then and not (np.array_equal(moments.mean, then.mean)
                                    and np.array_equal(moments.var, then.var)):
        return None
    return found
