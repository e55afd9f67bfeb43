"""Samples of a tensor from its moments, for the fallback (:mod:`.empirical`): its described
distribution (``Moments.source``) when it carries one, else Gaussian with the correlation of
its field across tokens; the field's root is computed once per law and shape when a node is
measured again on fresh samples (NLLB-MoE's router logits: 32 draws of 256 correlated tokens,
one eigendecomposition, not 32).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from .token_field import expanded, token_axes


def sample(m: Moments, shape, rng, roots: dict | None = None,
           unit_root: np.ndarray | None = None) -> np.ndarray:
    """Samples of ``shape`` from ``m``: its described distribution when it carries one, else
    Gaussian with its moments and its field across tokens (:func:`_across_tokens`), and its
    last axis correlated by ``unit_root`` when given (``z @ Q``, :func:`.loop_inputs.unit_root`)."""
    if m.source is not None:
        return m.source.sample(rng, shape)
    z = _across_tokens(m, shape, rng.standard_normal(shape), roots)
    if unit_root is not None:
        z = z @ unit_root
    return z * np.sqrt(m.var) + m.mean


def _across_tokens(m: Moments, shape, z: np.ndarray, roots: dict | None = None) -> np.ndarray:
    """Standard normal ``z`` given the correlation across tokens of ``m``'s field (a stacked
    recurrent layer exported as a Loop reads a sequence correlated over its steps): along the
    token axes ``z @ S`` with ``S^T S = cov`` (the field over every index of those axes,
    token_field.expanded); ``z`` unchanged without a field or where it cannot be spelled out.
    ``roots``: the axes and ``S`` of each ``(id(m), shape)`` sampled before (a node measured
    on fresh samples again: one eigendecomposition)."""
    key = (id(m), tuple(shape))
    if roots is None or key not in roots:
        found = _token_root(m, shape)
        if roots is not None:
            roots[key] = found
    else:
        found = roots[key]
    if found is None:
        return z
    axes, root = found
    end = list(range(len(shape) - len(axes), len(shape)))
    moved = np.moveaxis(z, axes, end)
    flat = moved.reshape(moved.shape[:len(shape) - len(axes)] + (-1,)) @ root
    return np.moveaxis(flat.reshape(moved.shape), end, axes)


def _token_root(m: Moments, shape):
    """(the token axes, ``S`` with ``S^T S`` the field's covariance over them) or None."""
    t = m.tokens
    axes = token_axes(t, len(shape)) if t is not None else None
    cov = expanded(t, [shape[a] for a in axes]) if axes is not None else None
    if cov is None or cov.shape[0] != int(np.prod([shape[a] for a in axes])):
        return None
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return axes, (v * np.sqrt(np.maximum(w, 0.0))).T  # root^T root = cov
