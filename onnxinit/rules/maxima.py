"""Order statistics for the max-type rules (MaxPool, GlobalMaxPool, ReduceMax, ReduceMin).

Two methods, both deterministic:

* :func:`max_moments`: K independent draws of one distribution (a Gaussian followed by an
  element-wise chain, e.g. a ReLU), discretised on 3072 quantile-spaced atoms (composite
  Gauss-Legendre in the Gaussian variable); the maximum of K draws of that discrete distribution
  has exactly ``P(max = v_(i)) = F_i^K - F_(i-1)^K``. Cheap for any K, cached.
* :func:`max_of_gaussians`: independent draws of *different* Gaussians ``z_i ~ N(m_i, s_i^2)``
  (each with a multiplicity n_i: the positions of one class in a window), followed by one
  non-decreasing function f (the chain: ReLU, BN's affine with a positive scale ...), since
  ``max_i f(z_i) = f(max_i z_i)``. The maximum's CDF is ``prod_i Phi((t - m_i)/s_i)^n_i``,
  evaluated on a grid of t spanning the maximum's support; E[f(M)] and E[f(M)^2] are Stieltjes
  sums over the grid (midpoint rule, 48 intervals from where the CDF is 1e-9 to 6 standard
  deviations above the highest tap).
* :func:`max_of_correlated_gaussians`: the same with the taps correlated (neighbouring
  positions of a conv output): one common factor per window, ``z_i = m_i + s_i (sqrt(r) w +
  sqrt(1 - r) e_i)`` with r the window's mean pairwise correlation, and the expectation over w
  by Gauss-Hermite quadrature of the independent case given w.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from .. import special

from ..moments import Source
from .context import RuleError
from .distinct_columns import distinct_columns
from .cell_blocks import broadcasts_nothing, flat_values
from .gaussian import COMPOSITE_W, COMPOSITE_Z, compose, expand

_CACHE: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}
_CACHE_SIZE = 4096
_GRID = 49  # grid points of the maximum's CDF (48 intervals: 0.1% on E[ReLU(max)], 1% on Var)
SPAN = 6.0  # standard deviations on each side
_CHUNK = 1 << 23  # elements of the [taps, grid, problems] array evaluated at once
_BLOCK = 1 << 15  # elements of the [taps, grid, problems] block in cache (the chunks' problems)


def max_moments(src: Source, counts: Sequence[int], rank: int, minimum: bool = False):
    """Per tracked index, (E, Var) of the max (or min) of K independent draws of ``src``'s
    distribution, for each K in ``counts``: a list of (E, Var) arrays laid out like ``src``."""
    mean, var = expand(src.mean, rank), expand(src.var, rank)
    key = (tuple(counts), minimum, rank, mean.shape, mean.tobytes(), var.shape, var.tobytes(),
           tuple(f.key for f in src.chain))
    if key in _CACHE:
        return _CACHE[key]
    shape = np.broadcast_shapes(mean.shape, var.shape)
    z = COMPOSITE_Z.reshape((-1,) + (1,) * len(shape))
    with np.errstate(all="ignore"):
        values = np.asarray(compose(src.chain)(mean + np.sqrt(var) * z), dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise RuleError("the input distribution is not finite")
    values = np.broadcast_to(values, (z.shape[0],) + values.shape[1:])
    if minimum:
        values = -values
    order = np.argsort(values, axis=0, kind="stable")
    v = np.take_along_axis(values, order, axis=0)
    p = COMPOSITE_W[order]
    cdf = np.minimum(np.cumsum(p, axis=0) / p.sum(axis=0, keepdims=True), 1.0)
    before = np.concatenate([np.zeros_like(cdf[:1]), cdf[:-1]], axis=0)
    out = []
    for k in counts:
        q = cdf**k - before**k
        e = (q * v).sum(axis=0)
        var_k = (q * (v - e) ** 2).sum(axis=0)
        out.append((-e if minimum else e, var_k))
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = out
    return out


def max_of_gaussians(mean, std, count, fn, sized: int | None = None):
    """(E[f(M)], Var[f(M)], E[f'(M)]) for M the maximum of independent ``z_i ~ N(mean_i, std_i^2)``
    drawn ``count_i`` times each (0: absent), f non-decreasing.

    ``mean``, ``std``, ``count`` are ``[T, *P]`` (T taps; P problems laid out at the tensor's
    rank, so that f's per-channel constants broadcast); returns ``[*P]`` arrays. ``sized``:
    the number of problems the taps are multiplied in chunks for (default: P's; a caller that
    passes some of its problems keeps each problem's values as among all of them).
    """
    mean, std, count = np.broadcast_arrays(np.asarray(mean, np.float64),
                                           np.asarray(std, np.float64),
                                           np.asarray(count, np.float64))
    problems = mean.shape[1:]
    taps = mean.shape[0]
    present = count > 0
    if not np.all(present.any(axis=0)):
        raise RuleError("a window with no valid tap")
    big = np.finfo(np.float64).max
    # below lo the CDF is < Phi(-SPAN) ~ 1e-9: no tap may exceed it with more than that
    # chance (the highest tap's lower edge), or all N draws sit under their q_N quantile,
    # Phi(q_N)^N = Phi(-SPAN) (the lowest such point over the taps)
    q_n = special.ndtri(special.ndtr(-SPAN) ** (1.0 / np.maximum(count.sum(axis=0), 1.0)))
    lo = np.maximum(np.where(present, mean - SPAN * std, -big).max(axis=0),
                    np.where(present, mean + q_n * std, big).min(axis=0))
    hi = np.where(present, mean + SPAN * std, -big).max(axis=0)
    hi = np.maximum(hi, lo)
    u = np.linspace(0.0, 1.0, _GRID).reshape((-1,) + (1,) * len(problems))
    span = hi - lo  # the grid: lo + span u, [G, *P]
    flat = broadcasts_nothing(fn, len(problems))  # f on a block's midpoints, else all first
    values = None if flat else _values_at_midpoints(fn, lo, span, u)
    n_problems = int(np.prod(problems)) if sized is None else sized
    n_chunk = max(1, _CHUNK // max(1, _GRID * n_problems or 1))
    small = float(count.max()) <= 64  # a product of CDFs cannot underflow: no logarithms
    scale = 1.0 / np.where(std > 0, std, 1.0)
    constant = std <= 0  # a constant tap (variance 0): its CDF is a step at its value
    if small:  # an absent tap's CDF is 1: at mean -inf it is Phi(+inf) = 1, ndtr's cheap end
        mean = np.where(present, mean, -np.inf)
        constant = constant & present
    flags = (constant.any(), not (small or present.all()), bool(np.any(count > 1)))
    # each block of problems (its [n, G, block] arrays in cache) runs from the taps' CDFs to
    # its moments: every value is computed as on the whole array, in the same order (the
    # taps in the same chunks; a block of one column would sum over the grid in another
    # order, so the last block is never one column wide)
    taps_f = tuple(a.reshape(taps, -1) for a in (mean, scale, count, constant))
    lo_f, span_f, u_f = lo.reshape(-1), span.reshape(-1), u.reshape(_GRID, 1)
    width = lo_f.size
    chunks = [slice(i, i + n_chunk) for i in range(0, taps, n_chunk)]
    # an absent tap's CDF is exactly 1, a factor that changes no product: problems sorted by
    # their absent taps, a block leaves out the taps absent from all of its problems (each
    # chunk's present taps still multiplied in their order, the chunks in theirs)
    order, present_f = None, None
    if small and not present.all() and _LEAVE_OUT_ABSENT:
        present_f = present.reshape(taps, -1)
        order = _pattern_order(present_f)
        # the counts are read only to raise a CDF to them, the constant flags only where a
        # tap is constant: otherwise not copied (a stand-in of the shape, never read)
        needed = (True, True, flags[2], flags[0])
        taps_f = tuple(np.take(a, order, axis=1) if need else np.broadcast_to(a.flat[0], a.shape)
                       for a, need in zip(taps_f, needed))
        mean = scale = count = constant = None  # the unsorted arrays, not read below
        present_f = present = np.take(present_f, order, axis=1)
        lo_f, span_f = lo_f[order], span_f[order]
        values = None if values is None else np.take(values, order, axis=1)
    block = max(2, _BLOCK // (_GRID * min(n_chunk, taps)))
    starts = list(range(0, width, block))
    if width > 1 and width - starts[-1] == 1:
        starts[-1] -= 1
    buffer = np.empty((min(n_chunk, taps), _GRID, min(block, width)))
    acc = np.empty((_GRID, min(block, width)))
    out = np.empty((3, width))
    for b in starts:
        cols = slice(b, min(b + block, width))
        a = acc[:, :cols.stop - b]
        grid = lo_f[cols] + span_f[cols] * u_f
        _cdf_block(a, grid, [t[:, cols] for t in taps_f],
                   chunks if order is None else _present_chunks(chunks, present_f[:, cols]),
                   small, flags, buffer)
        mid = np.concatenate([grid[:1], 0.5 * (grid[1:] + grid[:-1])])
        at_mid = flat_values(fn, mid, len(problems)) if flat else values[:, cols]
        out[:, cols] = _moments_block(a if small else np.exp(a), mid, at_mid)
    if order is not None:
        out[:, order] = out.copy()
    e, var, slope = (row.reshape(problems) for row in out)
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(var))):
        raise RuleError("the input distribution is not finite")
    return e, var, slope


_LEAVE_OUT_ABSENT = True  # problems sorted by their absent taps (any number of taps)


def _pattern_order(present) -> np.ndarray:
    """The problems (columns of ``present`` ``[T, P]``) in the order of their pattern of
    present taps read as the binary number ``sum_t present[t] 2^t`` (stable: equal patterns
    keep their order), for any number of taps: the bits packed 8 taps a byte, the bytes
    sorted on from the highest (``numpy.lexsort``'s last key first)."""
    packed = np.packbits(present, axis=0, bitorder="little")  # [ceil(T / 8), P]
    return np.lexsort(packed) if len(packed) > 1 else np.argsort(packed[0], kind="stable")


def _present_chunks(chunks, present) -> list:
    """Each chunk of taps (slices) as the indices of its taps present in some problem of the
    block (``present`` ``[T, b]``), chunks without one left out."""
    here = present.any(axis=1)
    if here.all():
        return chunks
    out = []
    for rows in chunks:
        kept = np.flatnonzero(here[rows]) + rows.start
        if kept.size:
            out.append(kept)
    return out


_ROWS = 1 << 21  # elements of the [rows, *P] arrays f is evaluated on at once


def _values_at_midpoints(fn, lo, span, u) -> np.ndarray:
    """f at the midpoints of the grid ``lo + span u`` (``[G, *P]``; the first point is its
    own), ``[G, P]``: f evaluated on a few grid rows at a time (``[rows, *P]`` arrays, so that
    its per-channel constants broadcast), the values those of one evaluation on every row."""
    values = np.empty((_GRID, lo.size))
    step = max(1, _ROWS // max(1, lo.size))
    for g0 in range(0, _GRID, step):
        g1 = min(_GRID, g0 + step)
        grid = lo + span * u[max(g0 - 1, 0):g1]
        mid = 0.5 * (grid[1:] + grid[:-1])
        if g0 == 0:
            mid = np.concatenate([grid[:1], mid])
        with np.errstate(all="ignore"):
            y = np.asarray(fn(mid), dtype=np.float64)
        values[g0:g1] = np.broadcast_to(y, mid.shape).reshape(g1 - g0, -1)
    return values


def _cdf_block(acc, grid, taps, chunks, small, flags, buffer):
    """Into ``acc`` ``[G, b]``, the maximum's CDF on ``grid`` ``[G, b]`` (``small``) or its
    logarithm: ``prod_i Phi((g - m_i) s_i^-1)^n_i`` over the taps ``taps`` = (mean, 1/std,
    count, constant), each ``[T, b]``, multiplied a chunk of taps (``chunks``: slices or
    index arrays of rows) at a time."""
    mean_f, scale_f, count_f, constant_f = taps
    has_constant, has_absent, repeated = flags
    acc.fill(1.0 if small else 0.0)
    g = grid[None]
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        for rows in chunks:
            m, c = mean_f[rows, None], count_f[rows, None]
            z = np.subtract(g, m, out=buffer[:m.shape[0], :, :g.shape[2]])  # standardised
            z *= scale_f[rows, None]
            if small:
                cdf_i = special.ndtr(z, out=z)
                if has_constant:
                    np.copyto(cdf_i, g >= m, where=constant_f[rows, None])
                if repeated:
                    np.power(cdf_i, c, out=cdf_i)
                if has_absent:
                    np.copyto(cdf_i, 1.0, where=(c <= 0))
                acc *= cdf_i[0] if len(cdf_i) == 1 else np.multiply.reduce(cdf_i, axis=0)
            else:
                lc = special.log_ndtr(z, out=z)
                if has_constant:
                    np.copyto(lc, np.where(g >= m, 0.0, -np.inf), where=constant_f[rows, None])
                lc *= c  # an absent tap (count 0) adds nothing: 0 * log, 0 * -inf = nan
                if has_absent:
                    np.copyto(lc, 0.0, where=(c <= 0))
                acc += lc[0] if len(lc) == 1 else lc.sum(axis=0)


def _moments_block(cdf, mid, values):
    """(E[f(M)], Var[f(M)], E[f'(M)]) ``[3, b]`` from the maximum's CDF ``[G, b]`` (changed:
    its last point set to 1, the mass above the grid) and f at the cells' midpoints: Stieltjes
    sums, the slope by central differences of f over the midpoints (numpy's ``diff`` and
    ``gradient``, written out into fewer temporaries)."""
    cdf[-1] = 1.0  # the mass above the grid (< 1e-9) goes to its last point
    mass = np.empty_like(cdf)
    mass[0] = cdf[0]  # - 0.0
    np.subtract(cdf[1:], cdf[:-1], out=mass[1:])
    e = (mass * values).sum(axis=0)
    var = (mass * (values - e) ** 2).sum(axis=0)
    with np.errstate(all="ignore"):  # E[f'(M)], for the output's correlation
        slope = _gradient(values)
        slope /= _gradient(mid)
    np.copyto(slope, 0.0, where=~np.isfinite(slope))
    return e, var, (mass * slope).sum(axis=0)


def _gradient(f):
    """``numpy.gradient(f, axis=0)`` at unit spacing: central differences inside, one-sided
    at the ends (the same operations)."""
    out = np.empty(f.shape)
    np.subtract(f[2:], f[:-2], out=out[1:-1])
    out[1:-1] /= 2.0
    np.subtract(f[1], f[0], out=out[0])  # / 1.0
    np.subtract(f[-1], f[-2], out=out[-1])
    return out


def _gauss_hermite(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    return z, w / w.sum()


# Gauss-Hermite nodes over the common factor of correlated taps: 4 while every correlation is
# at most _WEAK (a conv output's neighbours), 8 above. Either keeps the maximum's variance
# within 1% of a 24-node, 257-point reference up to rho = 0.3; 4 nodes are 2% off at 0.5.
_WEAK = 0.3
_FACTOR_RULES = {False: _gauss_hermite(4), True: _gauss_hermite(8)}


def max_of_correlated_gaussians(mean, std, count, fn, rho):
    """:func:`max_of_gaussians` for taps with pairwise correlation ``rho`` (broadcast to the
    problems ``[*P]``; clipped to [0, 1]): exact for equicorrelated taps, where
    ``z_i = m_i + s_i sqrt(rho) w + s_i sqrt(1 - rho) e_i`` with w, e_i independent standard
    normals, so that given w the taps are independent Gaussians
    ``N(m_i + s_i sqrt(rho) w, s_i^2 (1 - rho))``. A window whose pairs differ in correlation
    (the diagonal of a 2x2 window against its sides) is taken at the mean over its pairs.
    Moments over w: ``E = sum_q p_q E_q``, ``Var = sum_q p_q (Var_q + E_q^2) - E^2``."""
    mean, std, count = np.broadcast_arrays(np.asarray(mean, np.float64),
                                           np.asarray(std, np.float64),
                                           np.asarray(count, np.float64))
    rho = np.clip(np.broadcast_to(np.asarray(rho, np.float64), mean.shape[1:]), 0.0, 1.0)
    if not np.any(rho > 0):
        return max_of_gaussians(mean, std, count, fn)
    factor_z, factor_w = factor_rule(rho)
    problems = mean.shape[1:]
    sized = factor_z.size * int(np.prod(problems))
    distinct = _distinct_problems(mean, std, count, rho, fn)
    if distinct is not None:  # each distinct problem once, as among all of them
        first, inverse = distinct
        lay = (1,) * (len(problems) - 1) + (first.size,)
        mean, std, count = (np.take(a.reshape(a.shape[0], -1), first, axis=1)
                            .reshape(a.shape[:1] + lay) for a in (mean, std, count))
        rho = rho.reshape(-1)[first].reshape(lay)
    nodes = factor_z.reshape((1, -1) + (1,) * (mean.ndim - 1))
    shift = std[:, None] * np.sqrt(rho) * nodes  # [T, Q, *P]
    e, var, slope = max_of_gaussians(mean[:, None] + shift,
                                     np.broadcast_to((std * np.sqrt(1 - rho))[:, None],
                                                     shift.shape),
                                     np.broadcast_to(count[:, None], shift.shape), fn, sized)
    if distinct is not None:
        # np.take keeps the C order (a fancy index on axis 1 lays the copy out in another
        # order, and the sums over the factor below would add in another order)
        e, var, slope = (np.take(a.reshape(a.shape[0], -1), inverse, axis=1)
                         .reshape(a.shape[:1] + problems) for a in (e, var, slope))
    p = factor_w.reshape((-1,) + (1,) * (len(problems)))
    e_all = (p * e).sum(axis=0)
    var_all = (p * (var + e * e)).sum(axis=0) - e_all**2
    return e_all, np.maximum(var_all, 0.0), (p * slope).sum(axis=0)


_DISTINCT_SHARE = 0.97  # problems computed once each only where at most this share is distinct


def _distinct_problems(mean, std, count, rho, fn):
    """:func:`.distinct_columns.distinct_columns` of the problems ``[*P]`` (every tap's mean,
    std and count ``[T, *P]`` and rho), or None where f has per-axis constants (problems of
    two channels then differ even with equal taps)."""
    if mean.ndim < 2 or not broadcasts_nothing(fn, mean.ndim):
        return None
    taps = mean.shape[0]
    columns = np.concatenate([a.reshape(taps, -1) for a in (mean, std, count)]
                             + [rho.reshape(1, -1)])  # [3 T + 1, P]
    return distinct_columns(columns, _DISTINCT_SHARE)


def factor_rule(rho) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, weights) of the Gauss-Hermite rule over the windows' common factor: 8 nodes
    where any correlation is above the weak range, 4 otherwise."""
    return _FACTOR_RULES[bool(np.any(np.asarray(rho) > _WEAK))]


__all__ = ["SPAN", "factor_rule", "max_moments", "max_of_correlated_gaussians", "max_of_gaussians"]
