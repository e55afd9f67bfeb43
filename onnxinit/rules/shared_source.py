"""The law of a residual sum whose two operands are sparse linear maps of one tensor A.

IDInit's blocks (and any block built from copies, Dirac or hand-made sparse kernels) add a skip
``a = K_a * A`` (the identity, or a sparse projection) and a branch ``b = K_b * A`` made of
sparse convs of A with identity-on-input activations between them (a ReLU of a same-sign sum
of ReLU outputs: ``rules/support.py``). Every output channel j of the sum is then one linear
combination of a few values of A::

    s_j(q) = sum_k W_jk A_{c_k}(S q + o_k)        (k over the composed kernels' taps)

A is a ReLU output (or a mixture after the first block): s is skewed (0.2-0.9 on the IDInit
ResNet-20), and a ReLU after the sum clips less of it than of the Gaussian that
``mixture.relu_plus_linear`` or ``cross_fields._regressed_mixture`` put in place of the part of
the branch not explained by the skip. Here the law of s_j at an interior position is sampled
from A's law at those sites:

* the sites' joint law is a Gaussian copula: A = g_c(z) per channel, z jointly Gaussian with
  the correlation of A's field at the sites' offsets, ``Corr(z_k, z_l) = R[c_k, c_l, o_l - o_k]``
  (zero beyond the stored offsets). When A is an element-wise chain of a Gaussian (a ReLU
  output) g is that chain and R the field of its Gaussian: exact. When A is described by a
  Gaussian mixture, g is the mixture's quantile function and R the values' field (the copula
  is then an approximation of the dependence). Where A is itself a function of an earlier
  sampled sum (the stream of a chain of blocks) and that sum's draws, carried through the
  function, hold every site, they are A's joint law and are used instead (:func:`joint_law`);
* ``SAMPLES`` seeded draws give s_j's standardised law, cut in ``BINS`` equal-probability bins
  (each bin's mean and variance: a Gaussian mixture), which is laid on every position class of
  the sum with the class's own mean and variance (computed in closed form by the caller).
"""

from __future__ import annotations

import numpy as np

from .. import special
from ..moments import Moments
from .gaussian import compose
from .sparse_maps import LinearMap, linear_map, merged_taps

MAX_JOINT_SITES = 1024  # distinct sites of A up to which all channels are drawn jointly
WINDOW = 3  # output positions per axis drawn jointly: the field at offsets up to WINDOW - 1
SAMPLES = 1 << 11  # a power of 2 (Sobol), divisible by BINS
BINS = 16  # divides SAMPLES
_GRID = 16001  # points of a marginal's tabulated transform on [-8, 8]
_COARSE = 2001  # points at which it is computed


def interior(arr, spatial, lead: int = 0) -> np.ndarray:
    """``arr`` laid out like the cells (``lead`` leading axes) at the interior class of every
    spatial axis (the class of the middle position), ``[..., C]``."""
    arr = np.asarray(arr, np.float64)
    index = [slice(None)] * (lead + 2)
    for a, m in enumerate(spatial.maps):
        n = arr.shape[lead + 2 + a]
        index.append(int(m[m.size // 2]) if n > 1 else 0)
    return arr[tuple(index)][(slice(None),) * lead + (0,)]


def _marginals(a: Moments, channels: int):
    """(z grid, table [G, C]) with A_c = table[:, c] at z ~ N(0, 1) on the grid (interior
    class), and whether the copula's correlation is that of A's Gaussian; None when A is
    Gaussian (the sum is then Gaussian too) or of another law. Tabulated on _COARSE points,
    interpolated linearly to _GRID."""
    sp = a.spatial
    cells = sp.cells
    z = np.linspace(-8.0, 8.0, _COARSE)
    if cells.source is not None and cells.source.chain:
        src = cells.source
        rank = np.ndim(cells.mean)
        grid = z.reshape((-1,) + (1,) * rank)
        mean = np.reshape(src.mean, (1,) * (rank - np.ndim(src.mean)) + np.shape(src.mean))
        var = np.reshape(src.var, (1,) * (rank - np.ndim(src.var)) + np.shape(src.var))
        values = compose(src.chain)(mean[None] + np.sqrt(var)[None] * grid)
        values = np.broadcast_to(values, (_COARSE,) + np.broadcast_shapes(
            np.shape(values)[1:], np.shape(cells.mean)))
        coarse, chained = np.broadcast_to(interior(values, sp, 1), (_COARSE, channels)), True
    elif cells.mixture is None or cells.source is not None:
        return None
    else:
        w, m, v = (np.broadcast_to(interior(x, sp, 1), (len(cells.mixture[0]), channels))
                   for x in np.broadcast_arrays(*cells.mixture))
        s = np.sqrt(v)
        x = np.linspace((m - 8 * s).min(), (m + 8 * s).max(), _COARSE)[:, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(s > 0, (x - m) / np.where(s > 0, s, 1.0),
                         np.where(x >= m, np.inf, -np.inf))
        cdf = np.maximum.accumulate((w * special.ndtr(t)).sum(axis=1) / w.sum(axis=0), axis=0)
        p = special.ndtr(z)
        coarse = np.stack([np.interp(p, cdf[:, c], x[:, 0, 0]) for c in range(channels)], axis=1)
        chained = False
    fine = np.linspace(-8.0, 8.0, _GRID)
    table = np.stack([np.interp(fine, z, coarse[:, c]) for c in range(channels)], axis=1)
    return fine, table, chained


def _site_correlation(field: np.ndarray, channel: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``R[c_k, c_l, o_l - o_k]`` for the taps of one output channel, 0 beyond the field."""
    radius = np.array([(n - 1) // 2 for n in field.shape[2:]])
    d = offset[None, :, :] - offset[:, None, :]  # [K, K, n]
    inside = np.all(np.abs(d) <= radius, axis=-1)
    index = (channel[:, None], channel[None, :]) + tuple(
        np.clip(d[..., a] + radius[a], 0, 2 * radius[a]) for a in range(len(radius)))
    r = np.where(inside, field[index], 0.0)
    np.fill_diagonal(r, 1.0)
    return r


def _normal_points(dims: int, rng: np.random.Generator) -> np.ndarray:
    """SAMPLES standard normal points in ``dims`` dimensions: a scrambled Sobol sequence
    (quasi-Monte Carlo: the bins' moments converge much faster than with random draws)
    mapped by the normal quantile."""
    # scipy.stats takes 1.5 s of CPU to import (every command that loads the rules would pay
    # it): imported by the one function that draws
    from scipy.stats import qmc

    u = qmc.Sobol(dims, scramble=True, seed=rng).random(SAMPLES)
    return special.ndtri(np.clip(u, 1e-12, 1 - 1e-12))


def _transformed(z: np.ndarray, z_grid: np.ndarray, flat: np.ndarray, channel) -> np.ndarray:
    """``table[:, channel[k]]`` at the grid point nearest ``z[:, k]`` on the uniform
    ``z_grid`` (clamped at its ends; the grid step is 1/1000 of a standard deviation);
    ``flat`` the table channel-major, flattened."""
    step = z_grid[1] - z_grid[0]
    i = np.clip(np.rint((z - z_grid[0]) / step), 0, len(z_grid) - 1).astype(np.int64)
    i += np.asarray(channel) * len(z_grid)
    return flat.take(i)


def standardised_law(total: LinearMap, a: Moments, field: np.ndarray, gauss_field,
                     rng: np.random.Generator):
    """(w, m, v) ``[BINS, C]``: the law of ``total(A)`` per output channel at an interior
    position, standardised (mean 0, variance 1) and cut in BINS equal-probability bins; None
    when A is Gaussian or of another law (module docstring)."""
    channels = int(total.channel.max()) + 1
    found = _marginals(a, max(channels, field.shape[0]))
    if found is None:
        return None
    z_grid, table, chained = found
    flat = np.ascontiguousarray(table.T).reshape(-1)
    corr = gauss_field if chained and gauss_field is not None else field
    c_out = total.weight.shape[0]
    points = _normal_points(int((total.weight != 0).sum(axis=1).max()), rng)
    w = np.full((BINS, c_out), 1.0 / BINS)
    m, v = np.zeros((BINS, c_out)), np.ones((BINS, c_out))
    for j in range(c_out):
        live = total.weight[j] != 0
        ch, off, wt = total.channel[j][live], total.offset[j][live], total.weight[j][live]
        lam, vec = np.linalg.eigh(_site_correlation(corr, ch, off))
        root = vec * np.sqrt(np.clip(lam, 0.0, None))
        z = points[:, :len(wt)] @ root.T  # the first K coordinates: a Sobol sequence too
        s = _transformed(z, z_grid, flat, ch) @ wt
        sd = s.std()
        if not sd > 0:
            continue
        bins = np.sort((s - s.mean()) / sd).reshape(BINS, -1)
        m[:, j], v[:, j] = bins.mean(axis=1), bins.var(axis=1)
    return w, m, v


def _window_taps(total: LinearMap, width: int):
    """(channel, offset, weight, column) of every tap of every output channel j at each of
    the ``width^n`` output positions q of a window (``column = j width^n + q``)."""
    n = total.offset.shape[-1]
    grid = np.stack(np.meshgrid(*[np.arange(width)] * n, indexing="ij"), -1).reshape(-1, n)
    rows, taps = np.nonzero(total.weight != 0)
    shift = (np.asarray(total.stride) * grid)[:, None, :]  # [Q, 1, n]
    q = len(grid)
    return (np.tile(total.channel[rows, taps], q),
            (total.offset[rows, taps][None] + shift).reshape(-1, n),
            np.tile(total.weight[rows, taps], q),
            (rows[None, :] * q + np.arange(q)[:, None]).reshape(-1))


def _root(r: np.ndarray) -> np.ndarray:
    """L with ``L L^T = r``: Cholesky, or the clipped eigen-decomposition where r (built
    from a field cut at its stored offsets) is not positive definite."""
    try:
        return np.linalg.cholesky(r + 1e-10 * np.eye(len(r)))
    except np.linalg.LinAlgError:
        lam, vec = np.linalg.eigh(r)
        return vec * np.sqrt(np.clip(lam, 0.0, None))


def _drawn(draws: np.ndarray, sites: np.ndarray) -> np.ndarray | None:
    """``[N, S]``: A's joint draws ``[N, C_A, w...]`` at the sites (channel, offset...), the
    offsets translated into the draws' window (A is stationary over its interior); None when
    they span more than the window or name a channel the draws lack."""
    offset = sites[:, 1:] - sites[:, 1:].min(axis=0)
    if (sites[:, 0].max() >= draws.shape[1]
            or np.any(offset.max(axis=0) >= np.asarray(draws.shape[2:]))):
        return None
    return draws[(slice(None), sites[:, 0]) + tuple(offset.T)]


def _own_sites(total: LinearMap, a: Moments):
    """(width, taps, sites, inverse, values ``[N, S]``) from A's own joint draws
    (``CrossField.joint``) at the largest window width whose sites they hold, each draw
    scaled by A's standard deviation at the interior class; None without such draws."""
    own = a.spatial.corr.cross.joint if a.spatial.corr.cross is not None else None
    if own is None:
        return None
    cells = a.spatial.cells
    var = interior(np.broadcast_to(cells.var, np.broadcast_shapes(np.shape(cells.var),
                                                                  np.shape(cells.mean))),
                   a.spatial)
    sd = np.sqrt(np.broadcast_to(var, (own.shape[1],)))
    for width in (WINDOW, 1):
        taps = _window_taps(total, width)
        sites, inverse = np.unique(np.concatenate([taps[0][:, None], taps[1]], axis=1),
                                   axis=0, return_inverse=True)
        drawn = _drawn(own, sites)
        if drawn is not None:
            return width, taps, sites, inverse, drawn * sd[sites[:, 0]]
    return None


def _copula_sites(total: LinearMap, a: Moments, field: np.ndarray, gauss_field,
                  rng: np.random.Generator):
    """(width, taps, sites, inverse, values ``[SAMPLES, S]``) drawn from the Gaussian copula
    of A's marginals (module docstring); None beyond MAX_JOINT_SITES or for another law."""
    for width in (WINDOW, 1):
        taps = _window_taps(total, width)
        sites, inverse = np.unique(np.concatenate([taps[0][:, None], taps[1]], axis=1),
                                   axis=0, return_inverse=True)
        if len(sites) <= MAX_JOINT_SITES:
            break
    else:
        return None
    found = _marginals(a, max(int(sites[:, 0].max()) + 1, field.shape[0]))
    if found is None:
        return None
    z_grid, table, chained = found
    corr = gauss_field if chained and gauss_field is not None else field
    z = _normal_points(len(sites), rng) @ _root(
        _site_correlation(corr, sites[:, 0], sites[:, 1:])).T
    x = _transformed(z, z_grid, np.ascontiguousarray(table.T).reshape(-1), sites[:, 0])
    return width, taps, sites, inverse, x


def joint_law(total: LinearMap, a: Moments, field: np.ndarray, gauss_field,
              rng: np.random.Generator) -> np.ndarray | None:
    """``[N, C, w, ...]``: joint draws of every output channel of ``total(A)`` on a window of
    ``w = WINDOW`` interior positions per axis (``w = 1`` when that needs more than
    MAX_JOINT_SITES distinct sites of A), each channel standardised; None when even one
    position needs more.

    When A carries joint draws of its own (``CrossField.joint``: A a function of an earlier
    sampled residual sum, the stream of a chain of blocks) that hold every site, the sum is
    taken on them, ``s_j = sum_k W_jk sd_A(c_k) u_{c_k}(o_k)`` with u A's standardised
    draws: A's joint law itself, where the copula keeps only its marginals and correlation
    (on the Dirac-IDInit ResNet-20, a Gaussian copula of the ReLU outputs' mixture marginals
    gives their channel pairs 0.05 less correlation than its own, and none of their joint
    zeros: the next sum's ReLU had its channels' correlation 0.1-0.5 off). The widest window
    the draws hold is taken, before the copula's."""
    found = _own_sites(total, a)
    if found is None:
        found = _copula_sites(total, a, field, gauss_field, rng)
    if found is None:
        return None
    width, (channel, offset, weight, column), sites, inverse, x = found
    c_out, axes = total.weight.shape[0], offset.shape[-1]
    weights = np.zeros((len(sites), c_out * width**axes))
    np.add.at(weights, (inverse.reshape(-1), column), weight)
    s = (x @ weights).reshape((len(x), c_out) + (width,) * axes)
    pooled = (0,) + tuple(range(2, 2 + axes))
    sd = s.std(axis=pooled, keepdims=True)
    return (s - s.mean(axis=pooled, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def valid_classes(total: LinearMap, a_maps, out_maps) -> np.ndarray:
    """``[R_0, ...]``: the output position classes at which the sampled law holds: every
    position of the class has all its taps (of any channel) inside A and at A's interior class
    (the class of A's middle position), whose marginal and stationary field the sampling uses.
    Elsewhere (zero padding under some taps, or A's border law) the law differs: a border
    class of a max-pool keeps fewer of the interior's lower values, and an interior law laid
    on it with its own mean and variance puts mass below zero that a ReLU then clips."""
    live = total.weight != 0
    out = np.ones(())
    for a, (a_map, o_map) in enumerate(zip(a_maps, out_maps)):
        a_map, o_map = np.asarray(a_map), np.asarray(o_map)
        offsets = np.unique(total.offset[live][:, a])
        sites = total.stride[a] * np.arange(o_map.size)[:, None] + offsets[None, :]
        inside = (sites >= 0) & (sites < a_map.size)
        centre = a_map[a_map.size // 2]
        ok = np.all(inside & (a_map[np.clip(sites, 0, a_map.size - 1)] == centre), axis=1)
        classes = int(o_map.max()) + 1 if o_map.size else 1
        per_class = np.ones(classes, bool)
        np.logical_and.at(per_class, o_map, ok)
        out = np.multiply.outer(out, per_class)
    return out.astype(bool)


def binned(draws: np.ndarray):
    """(w, m, v) ``[BINS, C]`` of the joint draws ``[N, C, w...]`` (standardised per channel),
    every position of the window an interior position of the same law: each channel's values
    over the draws and positions sorted and cut in BINS equal-probability bins (the marginal
    of the joint law: :func:`standardised_law` without drawing again)."""
    c = draws.shape[1]
    s = np.sort(np.moveaxis(draws, 1, -1).reshape(-1, c), axis=0).reshape(BINS, -1, c)
    return np.full((BINS, c), 1.0 / BINS), s.mean(axis=1), s.var(axis=1)


def sampled_mixture(ctx, anchor: str, channels: int, axes: int, sign: float, mean, var,
                    out_maps):
    """(the Gaussian mixture of ``input0 + sign * input1`` on its cells (``mean``/``var``
    ``[1, C, R...]`` in closed form), :func:`joint_law` or None, the classes where it holds
    (:func:`valid_classes`)) when both inputs are :class:`LinearMap` s of ``anchor`` with the
    same stride, A carries a cross-channel field and some class is valid; None otherwise."""
    known = ctx.known
    a = known.get(anchor) if known is not None else None
    if a is None or a.spatial is None or a.spatial.corr is None or a.spatial.corr.cross is None:
        return None
    cross = a.spatial.corr.cross
    maps = [linear_map(ctx, name, anchor, cross.corr.shape[0], axes) for name in ctx.node.input]
    if any(m is None for m in maps) or maps[0].stride != maps[1].stride:
        return None
    if any(m.weight.shape[0] != channels for m in maps):
        return None
    total = merged_taps(np.concatenate([maps[0].channel, maps[1].channel], axis=1),
                    np.concatenate([maps[0].offset, maps[1].offset], axis=1),
                    np.concatenate([maps[0].weight, sign * maps[1].weight], axis=1))
    if total is None:
        return None
    total = LinearMap(maps[0].stride, *total)
    valid = valid_classes(total, a.spatial.maps, out_maps)
    if not valid.any():
        return None
    rng = ctx.rng()
    draws = joint_law(total, a, cross.corr, cross.gauss, rng)
    law = (binned(draws) if draws is not None
           else standardised_law(total, a, cross.corr, cross.gauss, rng))
    if law is None:
        return None
    w, m, v = law
    lead = (BINS, 1, channels) + (1,) * axes
    mean, var = np.broadcast_arrays(np.asarray(mean, np.float64), np.asarray(var, np.float64))
    sd = np.sqrt(var)
    mixture = (np.broadcast_to(w.reshape(lead), (BINS,) + mean.shape).copy(),
               mean[None] + sd[None] * m.reshape(lead), var[None] * v.reshape(lead))
    return mixture, draws, valid


__all__ = ["binned", "interior", "joint_law", "sampled_mixture", "valid_classes"]
