"""An element-wise chain whose Gaussian source is a dense layer of normalized rows: its moments
over the cosine law of the projection instead of the Gaussian.

Each element of a dense layer (MatMul or Gemm by a constant matrix, plus constants) of the rows
``n`` of a LayerNorm or ``F.normalize`` is ``z = u . n + b`` with ``u`` a fixed weight column:
``n`` has a fixed length, so z is bounded, its standardized law the cosine law at the rows'
participation ratio d (:mod:`.dense_rows`; ``sqrt(d) (2 B - 1)``, ``B ~ Beta((d - 1) / 2,
(d - 1) / 2)``, excess kurtosis ``-6 / (d + 2)``). For ``y = g(z)`` (g the chain from z, its
source's mean m and variance s^2 per cell) the moments are

    E[g(z)^p] = sum_i w_i g(m + s T_d(t_i))^p,   p = 1, 2

with ``(t_i, w_i)`` the Gauss-Hermite rule and ``T_d`` the quantile map from the normal to the
cosine law (:func:`.logit_law.cosine_deviates`): the same quadrature over the changed variable.
The variance of output feature j is ``u_j^T S u_j`` (S the rows' covariance, from their
field: :func:`.dense_rows.projection_variances`), at the source's mean level over the
features: the dense layer's rule may take the sum over independent features, whose spread
over the features is smaller (``x^3`` weighs each by ``s^6``). Only the difference to the
Gaussian of the source's own variance (same nodes) is added to the rule's own moments. For
``z^3`` the variance falls from ``15 s^6`` (centred) to ``E[c^6] s^6``, 0.82x the Gaussian's at
d = 28; the tanh-GELU written out (``x + 0.044715 x^3`` inside) reads it.

Not modelled: the direction of u relative to the rows' covariance (the isotropic law at the
participation ratio), the skewness of a projection of rows whose mean is not zero, sources
scaled per feature on the way from the dense layer (the chain's source must be the dense
output's Gaussian up to one scale), and sampling rules after the chain (still Gaussian).
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import numpy as np

from ..moments import Moments
from ..spatial import attach
from .context import RuleContext
from .dense_rows import dense_rows_dim, projection_variances
from .elementwise import refinement
from .gaussian import chain_at_nodes, compose, quadrature
from .kurtosis import chain_start
from .logit_law import cosine_deviates, cosine_of

_Z, _W = quadrature(True)
_DIMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {tensor: (x, d)}


def _law(ctx: RuleContext, z_name: str):
    """(d, per-feature variance ratios or None) of :mod:`.dense_rows` for ``z_name`` (d None:
    not such a dense layer), kept per graph while its moments are the same object (every
    node of a chain asks)."""
    memo = _DIMS.setdefault(ctx.graph, {})
    z = ctx.known[z_name]
    hit = memo.get(z_name)
    if hit is not None and hit[0] is z:
        return hit[1]
    d = dense_rows_dim(ctx, z_name)
    found = (d, projection_variances(ctx, z_name) if d is not None else None)
    memo[z_name] = (z, found)
    return found


def _one_scale(a: np.ndarray, b: np.ndarray) -> bool:
    """``a = k b`` cell for cell for one k > 0 (the source an affine map of z)."""
    top = float(np.max(b)) if b.size else 0.0
    if top <= 0 or not np.all(b > 1e-12 * top):
        return False
    ratio = a / b
    k = float(np.mean(ratio))
    return k > 0 and bool(np.allclose(ratio, k, rtol=1e-6, atol=0.0))


def _feature_profile(s_var: np.ndarray, projected) -> np.ndarray | None:
    """The source's variance with its profile over the last axis (the dense layer's output
    features) replaced by ``projected`` (``u_j^T S u_j``), its mean over the features kept:
    ``s_var * (projected_j / p_j) * (mean p / mean projected)``, p_j the source's variance
    averaged over the other axes; None where the sizes differ."""
    if projected is None or s_var.ndim == 0 or s_var.shape[-1] != projected.size:
        return None
    profile = s_var.reshape(-1, s_var.shape[-1]).mean(axis=0)
    if not np.all(profile > 0):
        return None
    scale = projected / profile * (profile.mean() / projected.mean())
    return np.ascontiguousarray(s_var * scale)


def cosine_moments(fn, mean: np.ndarray, var: np.ndarray, d: int, law_var=None):
    """``(E[g] - E_N[g], E[h^2] - E_N[h^2])`` per cell (module docstring), ``h = g - E_N[g]``:
    the cosine law's moments of ``g = fn(mean + std c)`` (std from ``law_var``, else ``var``)
    less the Gaussian's of variance ``var`` on the same nodes, the second centred on the
    Gaussian's mean (so ``Var = Var_N + second - first^2``)."""
    std = np.sqrt(np.maximum(var, 0.0))
    law_std = std if law_var is None else np.sqrt(np.maximum(law_var, 0.0))
    nodes = cosine_of(_Z.copy(), cosine_deviates(d))
    with np.errstate(all="ignore"):
        g = chain_at_nodes(fn, mean, std, _Z)
        c = chain_at_nodes(fn, mean, law_std, nodes)
        # both centred on the Gaussian's mean: the second moments' difference is then that of
        # the variances, with no E[g]^2 to cancel (as edgeworth._node_sums)
        centre = _W @ g
        g -= centre
        c -= centre
        first = _W @ c
        second = _W @ (c * c) - _W @ (g * g)
    return first.reshape(mean.shape), second.reshape(mean.shape)


@refinement
def light_tailed(y: Moments, ctx: RuleContext) -> Moments:
    """``y`` (an element-wise rule's output) with its chain integrated over the cosine law
    when the chain starts at a dense layer of normalized rows (module docstring); ``y`` itself
    otherwise."""
    known = ctx.known
    cells = y.spatial.cells if y.spatial is not None else y
    src = cells.source
    if known is None or src is None or not src.chain or not ctx.node.input or y.mixture:
        return y
    z_name = chain_start(ctx.graph, ctx.node.input[0], ctx)
    z = known.get(z_name)
    if z is None or z.mixture is not None or z.spatial is not None or z.source is not None:
        return y
    d, projected = _law(ctx, z_name)
    if d is None:
        return y
    try:
        shape = np.broadcast_shapes(*(np.shape(a) for a in (
            cells.mean, cells.var, src.mean, src.var, z.var)))
    except ValueError:
        return y
    s_mean, s_var, z_var = (np.broadcast_to(np.asarray(a, dtype=np.float64), shape)
                            for a in (src.mean, src.var, z.var))
    if not _one_scale(s_var, z_var):
        return y
    law_var = _feature_profile(s_var, projected)
    try:
        d1, d2 = cosine_moments(compose(src.chain), np.ascontiguousarray(s_mean),
                                np.ascontiguousarray(s_var), d, law_var)
    except ValueError:
        return y
    m0, v0 = (np.broadcast_to(np.asarray(a, dtype=np.float64), shape)
              for a in (cells.mean, cells.var))
    m1 = m0 + d1
    v1 = v0 + d2 - d1**2
    if not (np.all(np.isfinite(m1)) and np.all(np.isfinite(v1))):
        return y
    bad = ~(v1 > 0.05 * v0)
    m1, v1 = np.where(bad, m0, m1), np.where(bad, v0, v1)
    if y.spatial is None:
        return replace(y, mean=m1, var=v1)
    return attach(Moments(m1, v1, cells.source, None), y.spatial.maps, y.spatial.given)


__all__ = ["cosine_moments", "light_tailed"]
