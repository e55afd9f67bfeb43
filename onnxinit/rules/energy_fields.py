"""Per-channel statistics of a tensor's field that :mod:`.sample_energy` carries: the local
energy fluctuation of a Gaussian field with the tensor's spatial correlation, the quadrature
of an element-wise chain over its source Gaussian, and the chain's rule for the shared energy
``eta``, the mean loading ``alpha`` and the local fluctuation ``lam`` (formulas:
:mod:`.sample_energy`). The chain's growth of the energy is integrated per position class
(:mod:`.source_classes`): the sample's scale acts on the variance within each class, the
classes' means stay, and the chain's energy is taken about each class's own mean (``g = (f -
E_k f)^2`` over the variance within the classes), so a fixed pattern of class means far apart
is no energy."""

from __future__ import annotations

import functools
import math

import numpy as np

from ..moments import Moments
from ..views import broadcast_to
from .energy_loading import node_scales
from .gaussian import compose, composite_rule
from .source_classes import per_object, pooled_source, source_classes

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


_LOCAL: dict[int, tuple] = {}  # id(Moments) -> (weakref, shape, lam_G): read several times


def gaussian_local(m: Moments, shape) -> np.ndarray:
    """lam of a Gaussian field with m's spatial correlation: ``2 sum_{p,q} rho^2 / K^2``."""
    return per_object(_LOCAL, m, shape, lambda: _read_only(_field_local(m, shape)))


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


def chain_classes(m: Moments, shape, scale=None, shift=None, classes: bool = True):
    """f at the quadrature nodes of m's source Gaussian per position class
    (:func:`.source_classes.source_classes`: the class means fixed, the variance within each
    class times ``scale`` [C] and every mean plus ``shift`` [C] when given): (values ``[T, K,
    C]``, the classes' weights ``[K, C]``, their standard deviations ``[K, C]``); None without a
    chain, where f is not finite, or where the chain's constants vary along an axis other than
    the channels (a row's features after a folded LayerNorm: not a channel map). The classes
    are binned per channel (:func:`.source_classes.merged`), so their weights are per channel."""
    rank, c = len(shape), shape[1]
    src = m.source
    if src is None or not src.chain or max(np.ndim(src.mean), np.ndim(src.var)) > rank:
        return None
    if classes:
        mean, var, weights = source_classes(m, shape)
    else:  # one class: the pooled source
        mean, var = (a[None] for a in _source_channels(src, rank, c))
        weights = np.ones((1, c))
    var = var * (1.0 if scale is None else scale)
    mean = mean + (0.0 if shift is None else shift)
    sd = np.sqrt(var)
    k = weights.shape[0]
    target = (NODES.size * k, c) + (1,) * (rank - 2)
    with np.errstate(all="ignore"):
        y = compose(src.chain)((mean[None] + sd[None] * NODES[:, None, None]).reshape(target))
    y = np.asarray(y, np.float64)
    if y.ndim > len(target) or any(a not in (1, b) for a, b in zip(y.shape[::-1], target[::-1])):
        return None
    y = broadcast_to(y, target).reshape(NODES.size, k, c)
    return (y, weights, sd) if np.isfinite(y).all() else None


def chain_values(m: Moments, shape, scale=None, shift=None):
    """f at the quadrature nodes of m's source Gaussian per channel, its position classes
    pooled (law of total variance): (values ``[T, C]``, weights ``[T]``), the variance times
    ``scale`` and the mean plus ``shift`` ([C]) when given; None as :func:`chain_classes`. What
    the mixture (:mod:`.energy_mixture`), the pools' shared term (:mod:`.shared_pool`) and the
    masks' factors read: there the pooled Gaussian's scale carries a zero-padded conv's border
    pattern with the sample (it is the input's per-sample mean, which does: alpha), as
    torchvision's EfficientNet and MobileNetV3 measure; the chain's growth of the energy reads
    the classes apart (:func:`chain_law`, :func:`.chain_response.energy_response`)."""
    found = chain_classes(m, shape, scale, shift, classes=False)
    if found is None:
        return None
    return found[0][:, 0], WEIGHTS


def chain_at_energy_nodes(m: Moments, shape, eta: float, alpha: np.ndarray, base: Moments,
                          points, weights, load: np.ndarray, classes: bool = False):
    """The chain ending in moments ``m`` at the nodes ``points`` (``[E]`` or ``[E, C]``, weights
    ``weights``) of a sample's scale ``1 + eps`` of the shared energy ``eta``, with the mean
    offsets ``alpha`` [C] in the units of ``base`` (the chain's start) and each channel's scale
    by its loading ``load`` (:func:`.energy_loading.node_scales`): ``(E f, E f^2)`` per node,
    ``[E, C]`` each, pooled over the position classes; with ``classes`` per node and position
    class, ``[E, K, C]`` each, and the classes' weights ``[K, C]`` (the scale acts on the
    variance within each class: :mod:`.source_classes`). The location mixture's own variance
    comes out of the scale's, so the variance within the classes stays theirs. None where a
    node's f is not finite."""
    c = shape[1]
    s2 = np.maximum(source_var(m, shape), 1e-300)
    if classes:
        _, var, class_w = source_classes(m, shape)
    else:
        var, class_w = s2[None], np.ones((1, c))
    shift = alpha * np.sqrt(s2 / np.maximum(channel_var(base, c), 1e-300))
    within = np.clip(1.0 - shift**2 * eta / np.maximum((class_w * var).sum(axis=0), 1e-300),
                     0.0, 1.0)
    first, second = [], []
    for point, scale in zip(points, node_scales(points, weights, load)):
        got = chain_classes(m, shape, scale * within, shift * (point - 1.0), classes)
        if got is None:
            return None
        y = got[0]
        first.append(WEIGHTS @ y.reshape(NODES.size, -1))
        second.append(WEIGHTS @ (y * y).reshape(NODES.size, -1))
    k = class_w.shape[0]
    if not classes:
        return np.stack(first), np.stack(second)
    return (np.stack(first).reshape(-1, k, c), np.stack(second).reshape(-1, k, c), class_w)


def channel_var(m: Moments, c: int) -> np.ndarray:
    return broadcast_to(m.values_along(1, c)[1], (c,))


def chain_law(m: Moments, shape, law_z, z: Moments, z_shape):
    """f(z) of the Gaussian z its chain starts from (module docstring): (eta, lam, alpha, (the
    factor eta is multiplied by, alpha's slope in alpha_z, alpha's offset, the part of lam
    that z's spatial mean and energy carry: Hermite terms 1 and 2 and z's own excess, and per
    channel the energy's response to z's scale, beta, and per unit of z's offset, ``E[t g] /
    (sd(z) Var f)``: :mod:`.energy_loading`)). Per position class k (:func:`chain_classes`):
    ``g = (f - E_k f)^2``, the energy about the class's mean (the classes' pattern is no
    sample's energy), ``Var f`` the variance within the classes, every expectation the
    classes' weighted, the slopes in the mean ``E_k[t .] / s_k``."""
    found = chain_classes(m, shape)
    if found is None:
        return None
    eta_z, lam_z, alpha_z = law_z
    y, class_w, sd = found
    c, t = shape[1], NODES

    def per_class(a, h=None):  # E_k[h(t) a], [K, C]
        return ((WEIGHTS if h is None else WEIGHTS * h) @ a.reshape(t.size, -1)).reshape(
            class_w.shape)

    def mean(a, h=None):  # sum_k w_k E_k[h(t) a], [C]
        return (class_w * per_class(a, h)).sum(axis=0)

    inv_sd = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0), 0.0)
    g = (y - per_class(y)[None]) ** 2
    v_k = per_class(g)
    v = (class_w * v_k).sum(axis=0)
    safe = np.where(v > 0, v, 1.0)
    beta = np.where(v > 0, mean(g, (t**2 - 1) / 2) / safe, 1.0)
    # alpha_z is in z's units; the chain's Gaussian is z through the affine maps on the way
    s_src = np.sqrt(np.maximum(source_var(m, shape), 1e-300))
    ratio = s_src / np.sqrt(np.maximum(channel_var(z, c), 1e-300))
    slope = (class_w * per_class(y, t) * inv_sd).sum(axis=0) * ratio
    offset = mean(y, (t**2 - 1) / 2)
    alpha = slope * alpha_z + offset
    var_g = mean((g - v_k[None]) ** 2)
    terms = np.stack([mean(g, h) for h in _HERMITE]) ** 2 / _FACTORIALS  # a_n^2 / n!, [4, C]
    k = positions(shape)
    pairs = terms * _pair_powers(m, shape)
    cov = (var_g - terms.sum(axis=0)) / k + pairs.sum(axis=0)
    excess = beta**2 * np.maximum(lam_z - gaussian_local(z, z_shape), 0.0)
    beta2 = float(np.mean(beta)) ** 2
    tied = (pairs[0] + pairs[1]) / safe**2 + excess
    drift = np.where(v > 0, (class_w * per_class(g, t) * inv_sd).sum(axis=0) * ratio / safe,
                     0.0)
    return beta2 * eta_z, cov / safe**2 + excess, alpha, (beta2, slope, offset, tied, beta, drift)


def source_var(m: Moments, shape) -> np.ndarray:
    """The variance of m's source Gaussian per channel over the positions (total variance)."""
    return _source_channels(m.source, len(shape), shape[1])[1]


_SOURCE: dict[int, tuple] = {}  # id(Source) -> (weakref, (rank, C), (mean, var)): see below


def _source_channels(src, rank: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) ``[C]`` of a source Gaussian, its position classes pooled (total variance);
    read-only, kept per source: a chain's mixture asks for them at each of its nodes."""
    return per_object(_SOURCE, src, (rank, c),
                      lambda: pooled_source(Moments(src.mean, src.var, src), rank, c))


__all__ = ["chain_at_energy_nodes", "chain_classes", "chain_law", "chain_values", "channel_var",
           "gaussian_local", "positions", "source_var"]
