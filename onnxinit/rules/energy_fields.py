"""Per-channel statistics of a tensor's field that :mod:`.sample_energy` carries: the local
energy fluctuation of a Gaussian field with the tensor's spatial correlation, the quadrature
of an element-wise chain over its source Gaussian, and the chain's rule for the shared energy
``eta``, the mean loading ``alpha`` and the local fluctuation ``lam`` (formulas:
:mod:`.sample_energy`)."""

from __future__ import annotations

import functools
import math
import weakref

import numpy as np

from ..moments import Moments
from ..views import broadcast_to
from .energy_loading import node_scales
from .gaussian import compose, composite_rule

# composite Gauss-Legendre rule for E[g(t)], t ~ N(0, 1), on 96 nodes (kurtosis' coarse one:
# within 1.5% of its 192-node rule for HardSwish, ReLU, SiLU of N(m, s^2))
NODES, WEIGHTS = composite_rule(8.0, 24, 4)
_HERMITE = [NODES, NODES**2 - 1, NODES**3 - 3 * NODES, NODES**4 - 6 * NODES**2 + 3]
_FACTORIALS = np.array([1.0, 2.0, 6.0, 24.0])[:, None]


def _pair_sums(corr, sizes, powers) -> np.ndarray:
    """``(1/K^2) sum_{p,q} rho(p - q)^n`` for each n in ``powers``, ``[len(powers), C or 1]``
    (the floor's power beyond the stored offsets), from one table of pair counts."""
    rho, floor = corr
    k = int(math.prod(sizes))
    counts = _pair_counts(rho.shape[1:], tuple(int(s) for s in sizes))
    floor = np.reshape(floor, (-1,) + (1,) * len(sizes))
    axes = tuple(range(1, rho.ndim))
    # whole powers by multiplication: numpy's ** calls the C library's pow from the cube up,
    # 50 ns a value for the fourth power of small correlations (within an ulp of it)
    square = rho * rho
    products = {1: rho, 2: square, 3: square * rho if 3 in powers else None,
                4: square * square if 4 in powers else None}
    out = []
    for n in powers:
        f = floor**n
        power = products.get(n)
        power = rho**n if power is None else power
        out.append((((power - f) * counts).sum(axis=axes) + k * k * f.reshape(-1)) / (k * k))
    return np.stack(out)


@functools.lru_cache(maxsize=256)
def _pair_counts(offsets: tuple, sizes: tuple) -> np.ndarray:
    """The number of pairs of positions ``(p, q)`` of a map of ``sizes`` at each stored offset
    ``p - q`` (``offsets``: the correlation's odd extents, centred), ``[*offsets]``; read-only
    (a deep stack asks for the same few)."""
    counts = np.ones(())
    for n, s in zip(offsets, sizes):
        d = np.arange(n) - (n - 1) // 2
        counts = np.multiply.outer(counts, np.maximum(s - np.abs(d), 0).astype(np.float64))
    counts.flags.writeable = False
    return counts


def _correlation(m: Moments, shape, gaussian: bool = False):
    corr = m.spatial.corr if m.spatial is not None else None
    if corr is None or corr.rho.ndim != len(shape) - 1 or corr.rho.shape[0] not in (1, shape[1]):
        return None
    rho, floor = corr.gaussian() if gaussian else (corr.rho, corr.floor)
    return rho, broadcast_to(floor, (rho.shape[0],))


def _per_object(cache: dict, obj, key, compute):
    """``compute()`` kept per live ``obj`` and ``key``: ``cache`` maps ``id(obj)`` to (a weak
    reference confirming the same object, key, value); cleared beyond 4096 entries."""
    hit = cache.get(id(obj))
    if hit is not None and hit[0]() is obj and hit[1] == key:
        return hit[2]
    if len(cache) > 4096:
        cache.clear()
    out = compute()
    cache[id(obj)] = (weakref.ref(obj), key, out)
    return out


_LOCAL: dict[int, tuple] = {}  # id(Moments) -> (weakref, shape, lam_G): read several times


def gaussian_local(m: Moments, shape) -> np.ndarray:
    """lam of a Gaussian field with m's spatial correlation: ``2 sum_{p,q} rho^2 / K^2``."""
    return _per_object(_LOCAL, m, shape, lambda: _read_only(_field_local(m, shape)))


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _field_local(m: Moments, shape) -> np.ndarray:
    c = shape[1]
    corr = _correlation(m, shape)
    if corr is None:
        return np.full(c, 2.0 / positions(shape))
    return broadcast_to(2.0 * _pair_sums(corr, shape[2:], (2,))[0], (c,)).copy()


def _pair_powers(m: Moments, shape) -> np.ndarray:
    """``(1/K^2) sum_{p,q} rho_z(p - q)^n``, n = 1..4, per channel ``[4, C]`` (rho_z: the
    correlation of the Gaussian under m's chain; independent positions without one)."""
    c = shape[1]
    corr = _correlation(m, shape, gaussian=True)
    if corr is None:
        return np.full((4, c), 1.0 / positions(shape))
    return broadcast_to(_pair_sums(corr, shape[2:], (1, 2, 3, 4)), (4, c))


def positions(shape) -> int:
    return int(math.prod(shape[2:])) if len(shape) > 2 else 1


def chain_values(m: Moments, shape, scale=None, shift=None):
    """f at the quadrature nodes of m's source Gaussian per channel, pooled over the position
    classes (law of total variance): (values ``[T, C]``, weights ``[T]``), the variance times
    ``scale`` and the mean plus ``shift`` ([C]) when given; None without a chain, where f is
    not finite, or where the chain's constants vary along an axis other than the channels (a
    row's features after a folded LayerNorm: not a channel map). Pooling the classes takes a zero-padded conv's border pattern to move with
    the sample like the rest (it is the input's per-sample mean, which does: alpha)."""
    rank, c = len(shape), shape[1]
    src = m.source
    if src is None or not src.chain or max(np.ndim(src.mean), np.ndim(src.var)) > rank:
        return None
    mean, var = _source_channels(src, rank, c)
    var = var * (1.0 if scale is None else scale)
    mean = mean + (0.0 if shift is None else shift)
    cell = (1, c) + (1,) * (rank - 2)
    with np.errstate(all="ignore"):
        y = compose(src.chain)(mean.reshape(cell) + np.sqrt(var).reshape(cell)
                               * NODES.reshape((-1,) + (1,) * (rank - 1)))
    y, target = np.asarray(y, np.float64), (NODES.size,) + cell[1:]
    if y.ndim > len(target) or any(a not in (1, b) for a, b in zip(y.shape[::-1], target[::-1])):
        return None
    y = broadcast_to(y, target).reshape(-1, c)
    return (y, WEIGHTS) if np.isfinite(y).all() else None


def chain_at_energy_nodes(m: Moments, shape, eta: float, alpha: np.ndarray, base: Moments,
                          points, weights, load: np.ndarray):
    """The chain ending in moments ``m`` at the nodes ``points`` (``[K]`` or ``[K, C]``, weights
    ``weights``) of a sample's scale ``1 + eps`` of the shared energy ``eta``, with the mean
    offsets ``alpha`` [C] in the units of ``base`` (the chain's start) and each channel's scale
    by its loading ``load`` (:func:`.energy_loading.node_scales`): ``(E f, E f^2)`` per node,
    ``[K, C]`` each, pooled over the position classes. The location mixture's own variance
    comes out of the scale's, so the total stays ``s^2``. None where a node's f is not
    finite."""
    c = shape[1]
    s2 = np.maximum(source_var(m, shape), 1e-300)
    shift = alpha * np.sqrt(s2 / np.maximum(channel_var(base, c), 1e-300))
    within = np.clip(1.0 - shift**2 * eta / s2, 0.0, 1.0)
    first, second = [], []
    for point, scale in zip(points, node_scales(points, weights, load)):
        got = chain_values(m, shape, scale * within, shift * (point - 1.0))
        if got is None:
            return None
        y, w = got
        first.append(w @ y)
        second.append(w @ (y * y))
    return np.stack(first), np.stack(second)


def channel_var(m: Moments, c: int) -> np.ndarray:
    return broadcast_to(m.values_along(1, c)[1], (c,))


def chain_law(m: Moments, shape, law_z, z: Moments, z_shape):
    """f(z) of the Gaussian z its chain starts from (module docstring): (eta, lam, alpha, (the
    factor eta is multiplied by, alpha's slope in alpha_z, alpha's offset, the part of lam
    that z's spatial mean and energy carry: Hermite terms 1 and 2 and z's own excess, and per
    channel the energy's response to z's scale, beta, and per unit of z's offset, ``E[t g] /
    (sd(z) Var f)``: :mod:`.energy_loading`))."""
    found = chain_values(m, shape)
    if found is None:
        return None
    eta_z, lam_z, alpha_z = law_z
    y, w = found
    c, t = shape[1], NODES[:, None]
    g = (y - w @ y) ** 2
    v = w @ g
    safe = np.where(v > 0, v, 1.0)
    beta = np.where(v > 0, ((w * (t[:, 0] ** 2 - 1) / 2) @ g) / safe, 1.0)
    # alpha_z is in z's units; the chain's Gaussian is z through the affine maps on the way
    s_src = np.sqrt(np.maximum(source_var(m, shape), 1e-300))
    ratio = s_src / np.sqrt(np.maximum(channel_var(z, c), 1e-300))
    slope = (w * t[:, 0]) @ y * ratio / s_src
    offset = (w * (t[:, 0] ** 2 - 1) / 2) @ y
    alpha = slope * alpha_z + offset
    var_g = w @ (g - v) ** 2
    terms = np.stack([(w * h) @ g for h in _HERMITE]) ** 2 / _FACTORIALS  # a_n^2 / n!, [4, C]
    k = positions(shape)
    pairs = terms * _pair_powers(m, shape)
    cov = (var_g - terms.sum(axis=0)) / k + pairs.sum(axis=0)
    excess = beta**2 * np.maximum(lam_z - gaussian_local(z, z_shape), 0.0)
    beta2 = float(np.mean(beta)) ** 2
    tied = (pairs[0] + pairs[1]) / safe**2 + excess
    drift = np.where(v > 0, ((w * t[:, 0]) @ g) * ratio / s_src / safe, 0.0)
    return beta2 * eta_z, cov / safe**2 + excess, alpha, (beta2, slope, offset, tied, beta, drift)


def source_var(m: Moments, shape) -> np.ndarray:
    """The variance of m's source Gaussian per channel over the positions (total variance)."""
    return _source_channels(m.source, len(shape), shape[1])[1]


_SOURCE: dict[int, tuple] = {}  # id(Source) -> (weakref, (rank, C), (mean, var)): see below


def _source_channels(src, rank: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) ``[C]`` of a source Gaussian, its position classes pooled (total variance);
    read-only, kept per source: a chain's mixture asks for them at each of its nodes."""
    return _per_object(_SOURCE, src, (rank, c), lambda: tuple(
        broadcast_to(a, (c,))
        for a in Moments(src.mean, src.var).expand_rank(rank).values_along(1, c)))


__all__ = ["chain_at_energy_nodes", "chain_law", "chain_values", "channel_var", "gaussian_local", "positions",
           "source_var"]
