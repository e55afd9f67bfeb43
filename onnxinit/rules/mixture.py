"""Gaussian mixtures for sums of independent operands (``Moments.mixture``): a ReLU output as
its point mass at 0 and its positive part in equal-probability bins, a Gaussian as one
component; the sum of two independent operands pairs their components. Closed-form activations
(ReLU ...) then integrate each component exactly (``rules/elementwise.py``)."""

from __future__ import annotations

import numpy as np
from .. import special

from ..moments import Moments
from .context import RuleError
from .gaussian import gaussian_moments


def lift(a: np.ndarray, rank: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0 or a.ndim >= rank:
        return a
    return a.reshape((1,) * (rank - a.ndim) + a.shape)


def binary_independent(op: str, a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two independent operands: Add/Sub E = mu1 +/- mu2, Var = nu1 + nu2; Mul E = mu1 mu2,
    Var = (nu1 + mu1^2)(nu2 + mu2^2) - mu1^2 mu2^2. A masked element of one operand of Add or
    Sub (mean -inf, variance 0: a causal mask's fill) stays masked whatever finite value the
    other adds: E = -inf, Var = 0 there (mLSTM's log-gate matrix minus its row maximum)."""
    (ma, va), (mb, vb) = a, b
    if op in ("Add", "Sub"):
        mean = ma + mb if op == "Add" else ma - mb
        return mean, _masked_still(mean, va + vb)
    if op == "Mul":
        return ma * mb, (va + ma**2) * (vb + mb**2) - ma**2 * mb**2
    raise RuleError(f"{op} of these operands")


def _masked_still(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``var`` with 0 where ``mean`` is -inf (an element the mask fill reaches holds -inf
    exactly, whatever finite value is added to it)."""
    masked = np.isneginf(mean)
    if not masked.any():
        return var
    return np.where(masked, 0.0, np.broadcast_to(var, np.shape(masked)))


_MAX_COMPONENTS = 24  # of a sum's mixture: more and the smaller operand counts as Gaussian
_RELU_BINS = 3  # equal-probability bins of a ReLU's positive part in a mixture


_AFFINE_KEYS = frozenset({"Affine", "scale", "Identity", "Neg"})  # chain steps a x + b exactly


def at_rank(a, rank: int) -> np.ndarray:
    """``a`` left-padded to ``rank`` axes (a 0-d array too, unlike :func:`lift`)."""
    a = np.asarray(a, dtype=np.float64)
    return a.reshape((1,) * (rank - a.ndim) + a.shape) if a.ndim < rank else a


def _affine_of(chain, rank: int):
    """(a, b) with ``compose(chain)(x) = a x + b`` for a chain of affine steps, read off the
    chain at x = 0 and x = 1 (exact: each step is affine)."""
    zero, one = np.zeros((1,) * rank), np.ones((1,) * rank)
    for f in chain:
        zero, one = f.fn(zero), f.fn(one)
    zero = np.asarray(zero, dtype=np.float64)
    return np.asarray(one, dtype=np.float64) - zero, zero


def _split_chain(chain):
    """A chain read as ``affine, [Relu, affine]``: (leading affine steps, whether a ReLU
    follows, trailing affine steps); None for any other chain."""
    keys = [f.key[0] if f.key else None for f in chain]
    relus = [i for i, k in enumerate(keys) if k == "Relu"]
    if len(relus) > 1 or any(k not in _AFFINE_KEYS for i, k in enumerate(keys) if i not in relus):
        return None
    if not relus:
        return chain, False, ()
    return chain[: relus[0]], True, chain[relus[0] + 1:]


def _gaussian(mean, var, rank: int):
    return np.ones((1,) + (1,) * rank), at_rank(mean, rank)[None], at_rank(var, rank)[None]


def relu_parts(x: Moments, rank: int):
    """(mu, var, c, d) with ``x = c ReLU(u) + d``, u ~ N(mu, var) (``u = a z + b`` over x's
    source z), arrays laid out at ``rank``; None when x is not such a ReLU of a Gaussian."""
    src = x.source
    if src is None or not src.chain:
        return None
    parts = _split_chain(src.chain)
    if parts is None or not parts[1]:
        return None
    before, _, after = parts
    a, b = _affine_of(before, rank)
    c, d = _affine_of(after, rank)
    return at_rank(src.mean, rank) * a + b, at_rank(src.var, rank) * a * a, c, d


def components(x: Moments, rank: int):
    """x as Gaussian mixture components (w, m, v), each with a leading component axis and
    ``rank`` more: one component for a Gaussian, also after affine steps (a Gaussian stays
    one); for ``c ReLU(a z + b) + d``, z ~ N(mu, s^2), the point mass at ``d`` (weight
    P(a z + b <= 0)) and the positive part cut in _RELU_BINS equal-probability bins of
    ``a z + b``, each with its exact conditional mean and variance, mapped by ``c x + d``; a
    mixture-described x (a ReLU of a sum) its own components. None for any other chain."""
    src = x.source
    if src is None and x.mixture is not None:
        w, m, v = x.mixture
        if m.ndim <= rank + 1:
            return tuple(a.reshape(a.shape[:1] + (1,) * (rank + 1 - a.ndim) + a.shape[1:])
                         for a in (w, m, v))
    if src is None or not src.chain:
        return _gaussian(x.mean, x.var, rank)
    if _split_chain(src.chain) is None:
        return None
    found = relu_parts(x, rank)
    if found is None:
        return _gaussian(x.mean, x.var, rank)
    mu, var, c, d = found
    w, m, v = _relu_components(mu, var)
    return w, m * c + d, v * c * c


def truncated_bins(mu, s, lo, hi, p_lo, mass, bins: int = _RELU_BINS):
    """N(mu, s^2) restricted to [mu + lo s, mu + hi s] (standard units, lo may be -inf, hi
    +inf, ``p_lo = P(t <= lo)``, ``mass = P(lo < t <= hi)``) cut in ``bins`` bins of equal
    probability ``q = mass / bins``, with edges ``t_j``: (w, m, v), each bin's probability and
    exact conditional mean and variance. With the standard normal density phi (0 at +-inf, as
    is ``t phi(t)``), a bin [a, b] has::

        m = mu + s (phi(a) - phi(b)) / q
        v = s^2 (1 + (a phi(a) - b phi(b)) / q - ((phi(a) - phi(b)) / q)^2)
    """
    shape = np.shape(mu)
    k = np.arange(1, bins).reshape((-1,) + (1,) * len(shape))
    edges = np.empty((bins + 1,) + shape)
    edges[0], edges[-1] = lo, hi
    edges[1:-1] = special.ndtri(np.clip(p_lo + mass * k / bins, 0.0, 1.0))
    phi = np.square(edges)
    phi *= -0.5
    np.exp(phi, out=phi)  # exp(-inf) = 0: phi(+-inf) = 0 as written
    phi *= 1.0 / np.sqrt(2 * np.pi)
    with np.errstate(invalid="ignore"):
        tphi = edges * phi
    np.copyto(tphi, 0.0, where=phi == 0)  # t phi(t) -> 0 as t -> +-inf, not inf * 0
    part = np.asarray(mass / bins, dtype=np.float64)
    inside = part > 0
    safe = np.where(inside, part, 1.0)  # divided, not multiplied by 1/q: q may be subnormal
    cm = np.subtract(phi[:-1], phi[1:])
    cm /= safe
    cm *= inside
    cv = np.subtract(tphi[:-1], tphi[1:])
    cv /= safe
    cv += 1.0
    cv *= inside
    cv -= cm * cm
    np.maximum(cv, 0.0, out=cv)
    cm *= s
    cm += mu
    cv *= np.square(s)
    return np.broadcast_to(part, edges[:-1].shape), cm, cv


def zero_edge(mu, var):
    """(s, a0, P(u <= 0)) for u ~ N(mu, var), a0 = -mu / s the edge 0 in standard units."""
    s = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        a0 = np.where(s > 0, -mu / np.where(s > 0, s, 1.0), np.where(mu > 0, -np.inf, np.inf))
    return s, a0, special.ndtr(a0)


def _relu_components(mu: np.ndarray, var: np.ndarray):
    """ReLU(z), z ~ N(mu, var): the point mass at 0 and _RELU_BINS equal-probability bins of
    the positive part, as (w, m, v) with a leading component axis."""
    mu, var = np.broadcast_arrays(mu, var)
    s, a0, p0 = zero_edge(mu, var)
    w, m, v = truncated_bins(mu, s, a0, np.inf, p0, 1 - p0)
    return (np.concatenate([p0[None], w]), np.concatenate([np.zeros_like(mu)[None], m]),
            np.concatenate([np.zeros_like(var)[None], v]))


def relu_plus_linear(r: Moments, g: Moments, cov, rank: int, weights=None):
    """r + g for ``r = c ReLU(u) + d`` (u ~ N(mu, s^2)) and a Gaussian g jointly Gaussian with
    u (both linear images of one Gaussian: a residual block's skip and a ReLU branch),
    ``cov = Cov(r, g)``. Then ``g = k u + e``, e independent of u, with Stein's lemma
    ``Cov(r, g) = c k s^2 P(u > 0)``, ``E e = E g - k mu``, ``Var e = Var g - k^2 s^2``, and
    the sum is affine on each side of u = 0: ``k u + d + e`` below, ``(c + k) u + d + e``
    above; each side is cut in _RELU_BINS equal-probability bins of u (exact conditional
    moments), e added to every component. With position classes, ``cov`` is per channel and
    ``weights`` the classes' shares (broadcast to r's cells): one k per channel,
    ``k = Cov / sum_cells weight c s^2 P(u > 0)`` (the linear maps behind k are the same at
    every position). None when r is not such a ReLU or g not Gaussian."""
    found = relu_parts(r, rank)
    if found is None or g.source is not None and g.source.chain or g.mixture is not None:
        return None
    mu, var, c, d = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(*found))
    s, a0, p0 = zero_edge(mu, var)
    denom = c * var * (1 - p0)
    if weights is not None:
        axes = tuple(range(2, rank))
        denom = (np.broadcast_to(denom, np.broadcast_shapes(denom.shape, np.shape(weights)))
                 * weights).sum(axis=axes, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(denom != 0, at_rank(cov, rank) / np.where(denom != 0, denom, 1.0), 0.0)
    e_mean = at_rank(g.mean, rank) - k * mu
    e_var = np.maximum(at_rank(g.var, rank) - k * k * var, 0.0)
    lw, lm, lv = truncated_bins(mu, s, -np.inf, a0, 0.0, p0)
    hw, hm, hv = truncated_bins(mu, s, a0, np.inf, p0, 1 - p0)
    w = np.concatenate([lw, hw])
    m = np.concatenate([k * lm, (c + k) * hm]) + d + e_mean
    v = np.concatenate([k * k * lv, (c + k) ** 2 * hv]) + e_var
    return tuple(np.ascontiguousarray(a) for a in np.broadcast_arrays(w, m, v))


def sum_mixture(a: Moments, b: Moments, rank: int, subtract: bool = False):
    """a +/- b (independent) as a Gaussian mixture when each is a Gaussian or a ReLU of one:
    components pair up, w = w_i w_j, m = m_i +/- m_j, v = v_i + v_j. None when neither is a
    ReLU (the sum is Gaussian) or either is another function."""
    ca, cb = components(a, rank), components(b, rank)
    if ca is None or cb is None or (ca[0].shape[0] == 1 and cb[0].shape[0] == 1):
        return None
    if ca[0].shape[0] * cb[0].shape[0] > _MAX_COMPONENTS:  # the smaller part as one Gaussian
        if float(np.mean(a.var)) < float(np.mean(b.var)):
            ca = _gaussian(a.mean, a.var, rank)
        else:
            cb = _gaussian(b.mean, b.var, rank)
    (wa, ma, va), (wb, mb, vb) = ca, cb
    na, nb = wa.shape[0], wb.shape[0]

    def pair(x, y, combine):
        z = combine(x.reshape((na, 1) + x.shape[1:]), y.reshape((1, nb) + y.shape[1:]))
        return z.reshape((na * nb,) + z.shape[2:])

    return (
        pair(wa, wb, np.multiply),
        pair(ma, mb, np.subtract if subtract else np.add),
        pair(va, vb, np.add),
    )


def permuted(x: Moments, perm, rank: int):
    """x's law as a Gaussian mixture (:func:`components`) with the tensor's axes permuted by
    ``perm`` (a Transpose moves values, so each component moves with them); None when x is a
    Gaussian (nothing to carry) or of another law. A source's chain holds constants laid out
    for the input's axes, so a ReLU of a Gaussian is carried as its mixture."""
    if x.mixture is None and (x.source is None or not x.source.chain):
        return None
    found = components(x, rank)
    if found is None or found[0].shape[0] == 1:
        return None
    order = [0] + [a + 1 for a in perm]
    return tuple(np.transpose(a, order) for a in found)


def affine_mixture(x: Moments, a, b, rank: int):
    """The mixture of ``a x + b`` (arrays laid out at ``rank``) when x is described by one:
    each component mapped, ``(w, a m + b, a^2 v)``; None otherwise."""
    if x.source is not None or x.mixture is None or x.mixture[1].ndim != rank + 1:
        return None
    w, m, v = x.mixture
    a = np.asarray(a, dtype=np.float64)
    return w, a * m + b, a * a * v


def through(mixture, closed, fn, smooth: bool, rank: int | None):
    """``f`` of a Gaussian mixture (w, m, v), component by component: each component's
    moments ``(E_i, Var_i)`` in closed form (``closed(mu, var)``) or by quadrature of ``fn``,
    and ``E = sum_i w_i E_i``, ``Var = sum_i w_i (Var_i + E_i^2) - E^2``. Returns (mean, var,
    the mixture of the output with each component replaced by the Gaussian of its moments:
    exact for a component on one side of f's kinks, as the narrow components of a ReLU output
    are, and close for a smooth f of a narrow component)."""
    w, m, v = mixture
    if closed is not None:
        e_i, v_i = closed(m, v)
    else:
        e_i, v_i = gaussian_moments(fn, m, v, smooth=smooth, rank=None if rank is None else rank + 1)
    mean = (w * e_i).sum(axis=0)
    var = (w * (v_i + e_i**2)).sum(axis=0) - mean**2
    return mean, np.maximum(var, 0.0), (w, e_i, v_i)


__all__ = ["affine_mixture", "at_rank", "binary_independent", "components", "lift", "permuted",
           "relu_parts", "relu_plus_linear", "sum_mixture", "through"]
