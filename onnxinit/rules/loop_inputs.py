"""A Loop's or Scan's signal inputs drawn with their units correlated, for the empirical
fallback (:mod:`.empirical`).

The fallback draws each input element by element from its moments (along its token axes
correlated by its token field). A stacked recurrent layer written as a Loop reads the layer
before's states, whose units are correlated within a sample (they share its input): drawn
independent, the second layer's own units' covariance, which its dense head sums (``w^T S
w``), came out unlike the real one (Keras 3's masked LSTM: 1.62x for one of the head's two
outputs). Where the input has a field across its last axis (:mod:`.channel_covariance`; for a
Loop's output, the covariance measured there, :mod:`.measured_units`), its standard normal
draws ``z`` become ``z @ Q`` with ``Q^T Q`` its correlation, so that every step keeps it
(the steps' correlation is applied as before: the two combine as a Kronecker product, the
units' correlation taken the same at every step and lag).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from .channel_covariance import covariance
from ..moments import Moments
from .context import RuleContext
from .measured_units import MAX_UNITS


def unit_root(ctx: RuleContext, known: Mapping[str, Moments], name: str,
              shape) -> np.ndarray | None:
    """``Q`` ``[n, n]`` with ``Q^T Q`` the correlation across the last axis of input ``name``
    of the Loop or Scan of ``ctx`` (module docstring), ``known`` the moments propagated so far;
    None for another node, or where the input has no such field."""
    if ctx.node.op_type not in ("Loop", "Scan") or not shape or len(shape) < 2:
        return None
    f = covariance(replace(ctx, known=known), name)
    n = shape[-1]
    if (f is None or f.head_axis is not None or f.axis != len(shape) - 1 or n > MAX_UNITS
            or f.cov.shape != (n, n)):
        return None
    sd = np.sqrt(np.maximum(np.diag(f.cov), 0.0))
    if not np.all(sd > 0):
        return None
    w, v = np.linalg.eigh(f.cov / np.outer(sd, sd))
    return (v * np.sqrt(np.maximum(w, 0.0))).T


__all__ = ["unit_root"]
