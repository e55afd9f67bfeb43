"""The standard normal CDF of the cells last asked for, kept: a ReLU's moments
(``rules.gaussian.relu_parts``) and then its Hermite amplitudes
(``mehler.leaky_hermite_amplitudes``) ask for ``Phi(mean / std)`` of the same cells, and
scipy's ``ndtr`` costs about ten element-wise passes. The moments compute the density
``phi(mean / std)`` as well (:func:`keep_density`), which the amplitudes read back
(:func:`kept_density`): four passes, the exponential among them, not repeated."""

from __future__ import annotations

import numpy as np

from . import special

_kept: tuple | None = None  # (argument copy, read-only result, read-only density or None)


def ndtr_kept(x) -> np.ndarray:
    """``ndtr(x)`` for a float64 array, the last argument and result kept; the result is
    read-only (it may be handed out again)."""
    global _kept
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        return special.ndtr(x)
    kept = _kept
    if kept is not None and kept[0].shape == x.shape and np.array_equal(kept[0], x):
        return kept[1]
    out = special.ndtr(x)
    out.flags.writeable = False
    _kept = (x.copy(), out, None)
    return out


def keep_density(cdf: np.ndarray, pdf: np.ndarray) -> None:
    """Keep ``pdf``, the standard normal density ``exp(-x^2 / 2) / sqrt(2 pi)`` computed in that
    order, at the argument x whose CDF ``cdf`` :func:`ndtr_kept` returned last (nothing kept
    when another argument came since). ``pdf`` becomes read-only: the caller hands it over."""
    global _kept
    kept = _kept
    if kept is not None and kept[1] is cdf and pdf.shape == cdf.shape \
            and pdf.dtype == np.float64:
        pdf.flags.writeable = False
        _kept = (kept[0], cdf, pdf)


def kept_density(cdf: np.ndarray) -> np.ndarray | None:
    """The density kept with ``cdf`` (:func:`keep_density`), read-only; None when none is."""
    kept = _kept
    if kept is not None and kept[1] is cdf:
        return kept[2]
    return None


__all__ = ["keep_density", "kept_density", "ndtr_kept"]
