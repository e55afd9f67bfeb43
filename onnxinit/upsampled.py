"""A map with zeros inserted between its positions: the input a ConvTranspose convolves.

A ConvTranspose of stride s is the stride-1 Conv, with the kernel flipped and its channel axes
swapped, of the *zero-upsampled* input ``u(m) = x(m / s)`` where s divides m, 0 between
(``(n - 1) s + 1`` positions per axis). Along each axis the inserted zeros form one position
class of their own (mean 0, variance 0; the cells' source kept where its chain maps 0 to 0, as
a Pad keeps it), so the Conv rule's per-class statistics, tap by tap, are the ConvTranspose's
exactly: an output class sums the taps that land on real inputs.

The correlation of u is not stationary (a real position is correlated with real positions at
multiples of s only, and a zero with nothing). What the Conv reads from it, position by
position and averaged over the output positions, is still one stationary field:

* per output class, the cross terms of two taps t, t' that land on real inputs read
  ``Corr(x(i), x(i'))`` at ``i' - i = dil (t' - t) / s``: the field ``rho_u(D) = rho(D / s)``
  where s divides D (0 elsewhere, where no two real inputs meet), with each tap's own
  standard deviation (0 on a zero);
* averaged over the phases of the output (what pools, global means and the next Conv read as
  a stationary correlation), a stride-1 Conv of a cyclostationary input has the covariance of
  the same Conv of the input's phase-averaged covariance, ``C_u(D) = (nu / S) rho(D / s)
  [s | D]`` (S = prod s): the field above with the within variance ``nu / S`` that u's classes
  give (the zeros' share is (S - 1) / S). Beyond the stored offsets the per-sample component
  ``floor`` is met at one offset in S: ``floor / S``.

So ``upsampled(corr)`` is the Correlation of u for the Conv rule, the cross-channel field
included (the same spreading); an anchor (a branch's correlation with the block's input,
stated on the input's grid) and sampled joint draws are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .correlation import Correlation
from .moments import Moments, Source, Spatial
from .spatial import attach


def spread(field: np.ndarray, lead: int, strides: Sequence[int]) -> np.ndarray:
    """``field`` (``lead`` leading axes, then one centred axis of offsets per spatial axis)
    with its offsets multiplied by the strides: ``out(s d) = field(d)``, 0 at the offsets in
    between."""
    radius = [(n - 1) // 2 for n in field.shape[lead:]]
    out = np.zeros(field.shape[:lead] + tuple(2 * s * r + 1 for s, r in zip(strides, radius)))
    out[(Ellipsis,) + tuple(slice(None, None, s) for s in strides)] = field
    return out


def upsampled(corr: Correlation | None, strides: Sequence[int]) -> Correlation | None:
    """The correlation of the zero-upsampled map (module docstring); None (independent
    positions) stays None."""
    if corr is None or all(s == 1 for s in strides):
        return corr
    total = float(np.prod(strides))
    gauss = None
    if corr.gauss is not None:
        gauss = (spread(corr.gauss[0], 1, strides), np.asarray(corr.gauss[1]) / total)
    cross = corr.cross
    if cross is not None:
        cross = replace(cross, corr=spread(cross.corr, 2, strides),
                        gauss=None if cross.gauss is None else spread(cross.gauss, 2, strides),
                        anchor=None, joint=None)
    return Correlation(spread(corr.rho, 1, strides), np.asarray(corr.floor) / total, gauss,
                       corr.centred, cross, corr.normalized, corr.energy_pairs)


def _keeps_zero(source: Source | None, shape) -> bool:
    """Whether the source's element-wise chain maps 0 to 0 in every cell (ReLU, a scale)."""
    if source is None or not source.chain:
        return False
    fixed = np.zeros(shape)
    with np.errstate(all="ignore"):
        for f in source.chain:
            fixed = f.fn(fixed)
    fixed = np.asarray(fixed, dtype=np.float64)
    return fixed.shape == shape and bool(np.allclose(fixed, 0.0, rtol=0, atol=1e-12))


def zero_upsampled(sp: Spatial, strides: Sequence[int]) -> Spatial:
    """``sp`` (a map's position classes) with ``s - 1`` zeros inserted between neighbours
    along each axis of stride s: a new class per such axis for the zeros (mean 0, variance 0),
    the cells' source kept where its chain maps 0 to 0, the mixture dropped (as a Pad does);
    the correlation by :func:`upsampled`."""
    cells = sp.cells
    mean, var = np.broadcast_arrays(cells.mean, cells.var)
    full = mean.shape[:2] + sp.classes
    rank = len(full)
    mean = np.array(np.broadcast_to(mean, full), dtype=np.float64)
    var = np.array(np.broadcast_to(var, full), dtype=np.float64)
    src = cells.source
    if _keeps_zero(src, full):
        def laid(a):
            a = np.asarray(a, np.float64)
            return np.array(np.broadcast_to(a.reshape((1,) * (rank - a.ndim) + a.shape), full))
        src_mean, src_var = laid(src.mean), laid(src.var)
    else:
        src = None
    maps = list(sp.maps)
    for d, s in enumerate(strides):
        if s == 1:
            continue
        axis = 2 + d
        zero = mean.shape[axis]
        m = np.full((len(maps[d]) - 1) * s + 1, zero, dtype=np.int64)
        m[::s] = maps[d]
        maps[d] = m
        widths = [(0, 0)] * rank
        widths[axis] = (0, 1)
        mean = np.pad(mean, widths)
        var = np.pad(var, widths)
        if src is not None:
            src_mean, src_var = np.pad(src_mean, widths), np.pad(src_var, widths)
    source = None if src is None else Source(src_mean, src_var, src.chain)
    out = attach(Moments(mean, var, source), maps, upsampled(sp.corr, strides))
    if out.spatial is not None:
        return out.spatial
    return Spatial(tuple(np.asarray(m, np.int64) for m in maps), out, None)


__all__ = ["spread", "upsampled", "zero_upsampled"]
