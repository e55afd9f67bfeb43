"""What the energy a sample's positions share (:mod:`.sample_energy`) adds to a mean over every
position: the pooled means' deviations at the points of that energy (three lognormal nodes of
the continuous part, each two-point factor of a mask or gate), read by the global pools
(:mod:`.pooling`) and by the layer after them (:mod:`.pooled_energy`)."""

from __future__ import annotations

import weakref

import numpy as np

from ..moments import Moments
from ..strict import fall_back
from .context import RuleContext, RuleError
from .energy_fields import chain_values, channel_var, source_var
from .energy_loading import node_scales
from .kurtosis import mixture_nodes
from .sample_energy import chain_record, is_chain
from .sample_masks import pooled_factor, regression
from .stationary import stationary

_DEVIATIONS: dict[tuple, tuple] = {}  # (id(x), name, shape) -> (weakref to x, rows)


def pooled_shared(ctx: RuleContext, x: Moments, x_shape) -> np.ndarray | None:
    """dVar per channel that the shared energy adds to a mean over every position of
    ``x = f(z)`` (the node's input 0; module docstring); None where x is not an element-wise
    chain of a Gaussian or nothing is shared."""
    rows = shared_deviations(ctx, x, x_shape)
    return None if rows is None else (rows * rows).sum(axis=0)


def shared_deviations(ctx: RuleContext, x: Moments, x_shape) -> np.ndarray | None:
    """``[R, C]``: the pooled means' deviations at the points of the shared energy, weighted
    so that ``dVar_c = sum_r D_rc^2`` and the pooled channels' covariance through the shared
    energy is ``sum_r D_rc D_rc'`` (the node's input 0 pooled, as :func:`pooled_shared`)."""
    key = (id(x), ctx.node.input[0], tuple(x_shape))
    hit = _DEVIATIONS.get(key)
    if hit is not None and hit[0]() is x:  # the pool rule's, read again by the layer after it
        return hit[1]
    try:
        with np.errstate(all="ignore"):
            rows = _shared_deviations(ctx, x, tuple(x_shape))
    except (ValueError, IndexError, KeyError, TypeError, RuleError) as exc:
        fall_back(exc, (RuleError,))
        rows = None
    if len(_DEVIATIONS) > 1024:
        _DEVIATIONS.clear()
    _DEVIATIONS[key] = (weakref.ref(x), rows)
    return rows


def _shared_deviations(ctx: RuleContext, x: Moments, x_shape) -> np.ndarray | None:
    known, name = ctx.known, ctx.node.input[0]
    if known is None or len(x_shape) < 3 or not is_chain(ctx, name):
        return None
    record = chain_record(ctx, name, x_shape)
    if record is None:
        return None
    base, norms, found, kept = record
    if not (stationary(known[base], len(x_shape)) and stationary(x, len(x_shape))):
        return None
    c, shape = x_shape[1], tuple(x_shape)
    two_point = {k: f for k, f in found[3].items() if f[2]}
    rest = {k: f for k, f in found[3].items() if k not in two_point}
    eta, alpha = regression(found[0], found[2], rest)
    rows = []
    if eta > 0:
        sig2, wts = mixture_nodes(np.full(c, eta * kept))
        scales = node_scales(sig2, wts, found[5])
        s_src = np.sqrt(np.maximum(source_var(x, shape), 1e-300))
        shift = alpha * s_src / np.sqrt(np.maximum(channel_var(known[base], c), 1e-300))
        means = []
        for s2, scale in zip(sig2, scales):
            got = chain_values(x, shape, scale, shift * (s2 - 1.0))
            if got is None:
                return None
            means.append(got[1] @ got[0])
        means = np.stack(means)  # [3, C]
        rows.extend(np.sqrt(wts)[:, None] * (means - wts @ means))
    for e, a, p in two_point.values():
        got = pooled_factor(x, shape, known[base], e * kept, a, p)
        if got is None:
            return None
        rows.append(got)
    if not rows:
        return None
    rows = np.stack(rows)
    if not (np.all(np.isfinite(rows)) and np.any(rows != 0)):
        return None
    return rows


__all__ = ["pooled_shared", "shared_deviations"]
