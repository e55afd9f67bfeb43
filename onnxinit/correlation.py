"""Spatial correlation: how a channel's values at two positions of one sample co-vary.

A convolution's neighbouring outputs share inputs, so they are correlated; a depthwise kernel
gives each channel its own correlation pattern, and a non-linearity turns correlations of either
sign into positive ones (its second Hermite coefficient squares them). Averages over positions
(AveragePool, GlobalAveragePool, the squeeze of squeeze-excite) depend on the sum of these
correlations over every offset, so tiny correlations at many offsets change the variance of a
global pool by a factor of 2-3; maxima over correlated neighbours are smaller than over
independent ones.

What is modelled, per channel c (``Correlation``): the correlation coefficient rho_c(d) of the
fluctuations at offset d (|d_i| <= R_i, R_i = min(MAX_OFFSET, size_i - 1)) and ``floor_c``, the
correlation at every larger offset (a component shared by all positions of a sample, such as a
per-sample squeeze-excite scale). Positions are taken as stationary (the interior's correlation
holds at the border too). ``gauss`` is the same for the Gaussian a tensor's element-wise chain
starts from (its source), which element-wise rules need.

Rules (each exact under its stated assumption):

* Conv (groups, stride s, dilation):
  ``Cov_j(d) = sum_{c in group(j)} sum_delta G_jc(delta) nu_c rho_c(s d + dil delta)``, with
  ``G_jc(delta) = sum_t W_jct W_jc(t+delta)`` the kernel's autocorrelation. Cross-channel
  covariances of the input are not modelled (their contribution has mean zero over the random
  weights). When the exact sum costs more than ``CONV_BUDGET`` multiply-adds (counting at least
  16 offsets: wide dense convolutions, where the per-channel terms with delta != 0 are sums of
  many random-sign terms), only its expectation over the weights is kept: the delta = 0 terms,
  averaged over the output channels of a group (one correlation for all of them).
* Element-wise f of a Gaussian (Mehler's formula): ``Cov(f(x), f(x')) = sum_n a_n^2 rho^n / n!``
  with ``a_n = E[f(x) He_n(z)]`` (averaged over the position classes), eight terms, divided by
  f's variance within a position (:mod:`onnxinit.mehler`).
* BatchNorm and other per-channel affine maps: unchanged. Add of independent operands:
  covariances add. Mul by a per-sample ``[N, C, 1, 1]`` signal s (squeeze-excite, stochastic
  depth): ``Cov_y(d) = E[s^2] Cov_x(d) + mu_x^2 Var(s)`` (a component shared by every position).
* AveragePool: ``Cov(d) = (1/n^2) sum_{t,t'} Cov_x(s d + t' - t)``; the window's variance is
  ``(1/n^2) sum_{t,t'} Cov_x(t' - t)`` instead of ``nu/n``.
* MaxPool: Stein's lemma linearisation, ``Cov(max_A, max_B) ~ sum_{i in A, j in B} pi_i pi_j
  Cov_z(i, j)`` with ``pi_i = P(max > 0)/n`` (ReLU) the chance that tap i is the maximum, except
  for the taps two overlapping windows share, whose covariance is exact (rules/max_pool.py).
* Global mean over the K positions: ``Var = (nu/K^2) sum_d n(d) rho(d)``, n(d) the number of
  position pairs at offset d.

Correlation across channels is carried where weights are sparse and structured (``cross``,
:mod:`onnxinit.cross_channel`); elsewhere it is not modelled, nor is correlation across samples
(BatchNorm's batch statistics), the change of correlation near the border, and anything after
a layout op that moves positions (Reshape, Transpose, a cubic Resize), where it is dropped (a
stretch that puts the positions back carries what a global mean reads: rules/position_share.py).
A ConvTranspose and a nearest or linear Resize carry it (onnxinit/upsampled.py,
rules/resize_classes.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .views import broadcast_to

MAX_OFFSET = 6  # largest offset per axis at which the correlation is kept
CONV_BUDGET = 2e7  # multiply-adds above which a Conv keeps only the delta = 0 terms
_DIRECT_TAPS = 25  # kernels up to 5 x 5: autocorrelation by pairs of taps, not FFT


@dataclass(frozen=True, eq=False)
class Correlation:
    """rho ``[C or 1, 2R_0+1, ...]`` (centre = offset 0, = 1), floor ``[C or 1]``, and the same
    pair for the Gaussian of the tensor's source (None: the values are that Gaussian)."""

    rho: np.ndarray
    floor: np.ndarray
    gauss: tuple[np.ndarray, np.ndarray] | None = None
    centred: np.ndarray | None = None  # [C or 1]: see batch_centred()
    cross: object | None = None  # cross_channel.CrossField: channels' correlation with each other
    # a BatchNorm's output (or an affine map of it): the sample means of its square are
    # centred over the batch too (the normalization fixes both moments)
    normalized: bool = False
    # rho holds, besides the Gaussian's Mehler terms, the non-Gaussian covariance of distinct
    # positions that read common inputs (rules/pool_pairs.py): a pool adds only the rest
    energy_pairs: bool = False

    @property
    def radius(self) -> tuple[int, ...]:
        return tuple((n - 1) // 2 for n in self.rho.shape[1:])

    def gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        return self.gauss if self.gauss is not None else (self.rho, self.floor)

    def batch_centred(self, channels: int) -> np.ndarray:
        """Per channel, the fraction of the variance of a sample's spatial mean that is
        centred over the batch: BatchNormalization in training mode subtracts the batch mean,
        so the N sample means of its output sum to zero and their variance over a batch of N
        is (N-1)/N of one sample's. 1 after BatchNorm, carried through convs and sums in
        proportion to each input's share of the spatial-mean variance, 0 where unknown."""
        if self.centred is None:
            return np.zeros(channels)
        return np.broadcast_to(self.centred, (channels,)).astype(np.float64)

    def with_centred(self, centred, normalized: bool = False) -> Correlation:
        return Correlation(self.rho, self.floor, self.gauss, np.asarray(centred, np.float64),
                           self.cross, normalized, self.energy_pairs)


def independent(channels: int, sizes: Sequence[int]) -> Correlation:
    """Independent positions: rho = 1 at offset 0, 0 elsewhere."""
    radius = [min(MAX_OFFSET, s - 1) for s in sizes]
    rho = np.zeros((channels, *(2 * r + 1 for r in radius)))
    rho[(slice(None), *radius)] = 1.0
    return Correlation(rho, np.zeros(channels))


def recentred(field: np.ndarray, lead: int, radius: Sequence[int], fill) -> np.ndarray:
    """``field`` (``lead`` leading axes, then one centred axis of offsets per spatial axis) on
    the window ``|d_i| <= radius_i``: cropped, or extended with ``fill`` (broadcast against
    the leading axes) outside the stored offsets."""
    have = [(n - 1) // 2 for n in field.shape[lead:]]
    out = np.empty(field.shape[:lead] + tuple(2 * r + 1 for r in radius))
    out[...] = np.reshape(fill, np.shape(fill) + (1,) * len(radius))
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for h, r in zip(have, radius):
        k = min(h, r)
        src.append(slice(h - k, h + k + 1))
        dst.append(slice(r - k, r + k + 1))
    out[tuple(dst)] = field[tuple(src)]
    return out


def _extended(rho: np.ndarray, floor: np.ndarray, radius: Sequence[int]) -> np.ndarray:
    """rho on a larger window (radius per axis), ``floor`` outside the stored offsets."""
    return recentred(rho, 1, radius, floor.reshape(-1))


def _offsets(radius: Sequence[int]) -> list[np.ndarray]:
    return [np.arange(-r, r + 1) for r in radius]


def _gather(ext: np.ndarray, ext_radius, positions: Sequence[np.ndarray]) -> np.ndarray:
    """ext at integer offsets: ``positions[i]`` arrays of offsets along axis i (broadcast
    together); returns ``[C, *broadcast shape]``."""
    index = [slice(None)] + [p + r for p, r in zip(positions, ext_radius)]
    return ext[tuple(index)]


@functools.lru_cache(maxsize=32)
def _lag_matrix(kernel: tuple[int, ...]) -> np.ndarray:
    """``[K^2, prod(2k - 1)]`` (K = prod(kernel) taps): 1 where the pair of taps (t, t') is at
    lag t' - t, which sums the products W[t] W[t'] into the autocorrelation's lags."""
    taps = np.array(list(np.ndindex(*kernel)))
    lags = taps[None, :, :] - taps[:, None, :] + (np.array(kernel) - 1)
    index = np.ravel_multi_index(tuple(lags.reshape(-1, len(kernel)).T),
                                 tuple(2 * k - 1 for k in kernel))
    out = np.zeros((len(taps) ** 2, int(np.prod([2 * k - 1 for k in kernel]))))
    out[np.arange(out.shape[0]), index] = 1.0
    return out


@functools.lru_cache(maxsize=64)
def _lag_indices(radius: tuple, strides: tuple, dilations: tuple, kernel: tuple, lags: tuple,
                 ext_r: tuple) -> list[tuple]:
    """Per lag delta, the index of ``ext`` (the input covariance on the window ``ext_r``) at
    ``s d + dil delta`` for the offsets d of :func:`conv` (d_0 >= 0): the geometry alone, the
    same for every Conv of a deep stack's blocks."""
    n = len(kernel)
    d_axes = _offsets(radius)
    d_axes[0] = d_axes[0][radius[0]:]
    out = []
    for lag in lags:
        positions = []
        for a, (d, st, dl, k, l) in enumerate(zip(d_axes, strides, dilations, kernel, lag)):
            shape = [1] * n
            shape[a] = d.size
            positions.append((d * st + (l - (k - 1)) * dl).reshape(shape))
        index = (slice(None),) + tuple(p + r for p, r in zip(positions, ext_r))
        for a in index[1:]:
            a.flags.writeable = False
        out.append(index)
    return out


def _kernel_autocorrelation(w: np.ndarray) -> np.ndarray:
    """G[j, c, delta] = sum_t W[j,c,t] W[j,c,t+delta], delta in [-(k-1), k-1] per axis (the
    kernels' autocorrelation): for up to ``_DIRECT_TAPS`` taps as the products of every pair
    of taps summed per lag (one matrix product), else by FFT over the spatial axes padded to
    2k - 1."""
    kernel = w.shape[2:]
    if all(k == 1 for k in kernel):  # a pointwise conv mixes channels only: G = W^2 at lag 0
        return w * w
    taps = int(np.prod(kernel))
    if taps <= _DIRECT_TAPS:
        flat = w.reshape(w.shape[0], w.shape[1], taps)
        pairs = (flat[..., :, None] * flat[..., None, :]).reshape(w.shape[0], w.shape[1], -1)
        return (pairs @ _lag_matrix(tuple(kernel))).reshape(
            w.shape[:2] + tuple(2 * k - 1 for k in kernel))
    axes = tuple(range(2, 2 + len(kernel)))
    size = [2 * k - 1 for k in kernel]
    f = np.fft.rfftn(w, s=size, axes=axes)
    g = np.fft.irfftn(f * np.conj(f), s=size, axes=axes)  # circular: lag l at index l mod size
    for i, k in enumerate(kernel):  # reorder to delta = -(k-1) .. k-1
        g = np.roll(g, k - 1, axis=2 + i)
    return g


def conv(corr: Correlation, nu: np.ndarray, w: np.ndarray, groups: int, strides, dilations,
         out_sizes) -> tuple[Correlation, np.ndarray]:
    """The output correlation of a Conv and, per output channel, ``Cov_j(0)``: the variance of
    an interior output with the input's correlation (``sum W^2 nu`` for independent inputs).
    ``nu`` ``[C_in]``: the input's variance per channel."""
    c_out, cpg = w.shape[:2]
    kernel = w.shape[2:]
    n = len(kernel)
    radius = [min(MAX_OFFSET, s - 1) for s in out_sizes]
    # rho(-d) = rho(d): compute the offsets with d_0 >= 0 and mirror the rest
    half = [radius[0] + 1] + [2 * r + 1 for r in radius[1:]]
    n_d = int(math.prod(half))
    n_delta = int(math.prod([2 * k - 1 for k in kernel]))
    rho, floor = corr.rho, corr.floor
    c_in = cpg * groups
    rho = broadcast_to(rho, (c_in,) + rho.shape[1:])
    floor = broadcast_to(floor, (c_in,))
    exact = c_out * cpg * n_delta * max(n_d, 16) <= CONV_BUDGET
    opg = c_out // groups
    if exact:  # every kernel-autocorrelation lag delta
        g = _kernel_autocorrelation(w).reshape(groups, opg, cpg, -1)
        lags = list(np.ndindex(*(2 * k - 1 for k in kernel)))
        ext_r = [s * r + dl * (k - 1) for s, r, dl, k in zip(strides, radius, dilations, kernel)]
    else:  # its expectation over the weights: the lag-0 terms, averaged over output channels
        g = (w * w).reshape(groups, opg, cpg, -1).sum(axis=-1).mean(axis=1, keepdims=True)
        g = g[..., None]
        opg = 1
        lags = [tuple(k - 1 for k in kernel)]
        ext_r = [s * r for s, r in zip(strides, radius)]
    ext = _extended(rho * nu.reshape((-1,) + (1,) * n), floor * nu, ext_r)
    cov = np.zeros((groups, opg, n_d))
    indices = _lag_indices(tuple(radius), tuple(strides), tuple(dilations), tuple(kernel),
                           tuple(lags), tuple(ext_r))
    for i, index in enumerate(indices):  # Cov(d) += G(delta) nu rho(s d + dil delta)
        cols = ext[index].reshape(groups, cpg, n_d)
        gi = g[..., i] if exact else g[..., 0]
        if cpg == 1 and opg == 1:  # depthwise
            cov += gi[:, :, :1] * cols
        else:
            cov += gi @ cols
    summed = w.reshape(groups, c_out // groups, cpg, -1).sum(axis=-1) ** 2
    if opg == 1 and c_out // groups > 1:
        summed = summed.mean(axis=1, keepdims=True)
    far = np.einsum("gjc,gc->gj", summed, (floor * nu).reshape(groups, cpg))
    if opg != c_out // groups and groups > 1:  # one per group: to every channel of the group
        cov = np.repeat(cov, c_out // groups, axis=1)
        far = np.repeat(far, c_out // groups, axis=1)
    cov = cov.reshape((-1, *half))
    far = far.reshape(-1)
    mirrored = np.flip(cov[:, 1:], axis=tuple(range(1, n + 1)))
    cov = np.concatenate([mirrored, cov], axis=1)
    centre = cov[(slice(None), *radius)].copy()
    safe = np.where(centre > 0, centre, 1.0)
    out_rho = cov / safe.reshape((-1,) + (1,) * n)
    out_rho[(slice(None), *radius)] = 1.0
    out_floor = np.clip(far / safe, -1.0, 1.0)
    out = Correlation(np.clip(out_rho, -1.0, 1.0), out_floor)
    if corr.centred is not None:  # a sample's spatial mean passes with the summed kernel
        share = (w.reshape(groups, c_out // groups, cpg, -1).sum(axis=-1) ** 2
                 * (nu * _spatial_mean_factor(corr, c_in)).reshape(groups, 1, cpg))
        total = share.sum(axis=-1)
        centred = (share * corr.batch_centred(c_in).reshape(groups, 1, cpg)).sum(axis=-1)
        out = out.with_centred((centred / np.where(total > 0, total, 1.0)).reshape(c_out))
    return out, centre


def _spatial_mean_factor(corr: Correlation, channels: int) -> np.ndarray:
    """sum_d rho(d) over the stored offsets (plus nothing beyond): the relative size of a
    channel's spatial-mean component, for weighting the batch-centred fraction."""
    local = corr.rho.reshape(corr.rho.shape[0], -1).sum(axis=1)
    return broadcast_to(np.maximum(local, 1e-12), (channels,))


def add(parts: Sequence[tuple[Correlation, np.ndarray]], sizes) -> Correlation:
    """Sum of independent operands with variances ``nu`` ``[C]``: covariances add."""
    radius = [min(MAX_OFFSET, s - 1) for s in sizes]
    n = len(radius)
    cov, far, total, mean_part, centred = 0.0, 0.0, 0.0, 0.0, 0.0
    for corr, nu in parts:
        nu_b = nu.reshape((-1,) + (1,) * n)
        cov = cov + _extended(corr.rho, corr.floor, radius) * nu_b
        far = far + corr.floor * nu
        total = total + nu
        share = nu * _spatial_mean_factor(corr, nu.size)
        mean_part = mean_part + share
        centred = centred + share * corr.batch_centred(nu.size)
    safe = np.where(total > 0, total, 1.0)
    out = Correlation(cov / safe.reshape((-1,) + (1,) * n), far / safe)
    if any(corr.centred is not None for corr, _ in parts):
        out = out.with_centred(centred / np.where(mean_part > 0, mean_part, 1.0))
    return out


def product(cx: Correlation, nx, mx, cs: Correlation, ns, ms, sizes) -> Correlation | None:
    """y = x s, x and s independent with per-channel variances nu, means mu ``[C]``:
    ``Cov_y(d) = (nu_x rho_x(d) + mu_x^2)(nu_s rho_s(d) + mu_s^2) - mu_x^2 mu_s^2``."""
    radius = [min(MAX_OFFSET, s - 1) for s in sizes]
    n = len(radius)

    def b(a):
        return np.asarray(a, np.float64).reshape((-1,) + (1,) * n)

    ex = _extended(cx.rho, cx.floor, radius)
    es = _extended(cs.rho, cs.floor, radius)
    cov = (b(nx) * ex + b(mx) ** 2) * (b(ns) * es + b(ms) ** 2) - b(mx) ** 2 * b(ms) ** 2
    far = (nx * cx.floor + mx**2) * (ns * cs.floor + ms**2) - mx**2 * ms**2
    var = (nx + mx**2) * (ns + ms**2) - mx**2 * ms**2
    safe = np.where(var > 0, var, 1.0)
    rho = cov / b(safe)
    rho[(slice(None), *radius)] = 1.0
    out = Correlation(np.clip(rho, -1, 1), np.clip(far / safe, -1, 1))
    if cx.centred is None and cs.centred is None:
        return out
    return out.with_centred(_product_centred(cx, nx, mx, cs, ns, ms, sizes))


def _product_centred(cx: Correlation, nx, mx, cs: Correlation, ns, ms, sizes) -> np.ndarray:
    """The batch-centred fraction of the spatial mean of y = x s: its variance is
    ``mu_s^2 nu_x F_x + mu_x^2 nu_s F_s + nu_x nu_s F_xs`` (F: :func:`mean_variance_factor`,
    F_xs taken as the smaller), of which the first part is centred as x is and the second as
    s is (a squeeze-excite gate: the projection's BatchNorm after it then centres only what is
    left, 0.98 of the variance measured there, not 7/8)."""
    channels = np.broadcast(nx, ns, mx, ms).shape[0] if np.ndim(nx) else 1
    fx = mean_variance_factor(cx, sizes)
    fs = mean_variance_factor(cs, sizes)
    own_x = ms**2 * nx * fx
    own_s = mx**2 * ns * fs
    total = own_x + own_s + nx * ns * np.minimum(fx, fs)
    centred = own_x * cx.batch_centred(channels) + own_s * cs.batch_centred(channels)
    return centred / np.where(total > 0, total, 1.0)


def window_sum(corr: Correlation, kernel, strides, dilations, out_sizes, weights=None):
    """For a window of n taps with weights pi_t (default 1/n), the output's covariance
    relative to the input variance: ``cov(d) = sum_{t,t'} pi_t pi_t' rho(s d + dil (t'-t))``;
    the batch-centred fraction per channel passes unchanged; returns (Correlation of the output, cov(0) per channel)."""
    taps = int(np.prod(kernel))
    c = corr.rho.shape[0]
    w = np.full((c, 1, *kernel), 1.0 / taps) if weights is None else weights
    # each output channel reads its own input channel only, so the batch-centred fraction of
    # its spatial mean is the input's (kept as given: per channel under a rho pooled to [1])
    uncentred = Correlation(corr.rho, corr.floor, corr.gauss, None, corr.cross,
                            corr.normalized, corr.energy_pairs)
    out, centre = conv(uncentred, np.ones(c), w, c, strides, dilations, out_sizes)
    return (out if corr.centred is None else out.with_centred(corr.centred)), centre


def window_pairs(corr: Correlation, kernel, dilations) -> np.ndarray:
    """The correlation of every pair of taps t < t' of one window, ``rho(dil (t' - t))``,
    per channel: ``[C or 1, pairs]`` (``floor`` beyond the stored offsets)."""
    taps = np.array(list(np.ndindex(*kernel)))
    first, second = np.triu_indices(len(taps), k=1)
    steps = (taps[second] - taps[first]) * np.asarray(dilations)
    radius = [int(np.abs(steps[:, a]).max(initial=0)) for a in range(len(kernel))]
    ext = _extended(corr.rho, corr.floor, radius)
    return _gather(ext, radius, [steps[:, a] for a in range(len(kernel))])


def mean_variance_factor(corr: Correlation, sizes) -> np.ndarray:
    """(1/K) sum_{p,p'} rho(p - p') over the K positions, per channel: the variance of the
    spatial mean in units of nu/K (1 for independent positions)."""
    radius = corr.radius
    k = int(np.prod(sizes))
    counts = np.ones(())
    for r, s in zip(radius, sizes):
        d = np.arange(-r, r + 1)
        counts = np.multiply.outer(counts, np.maximum(s - np.abs(d), 0).astype(np.float64))
    local = ((corr.rho - corr.floor.reshape((-1,) + (1,) * len(sizes))) * counts).sum(
        axis=tuple(range(1, corr.rho.ndim)))
    return (local + k * k * corr.floor) / k


def select(corr: Correlation, indices: np.ndarray) -> Correlation:
    """The channels ``indices`` of a per-channel correlation."""
    def take(a):
        return a if a.shape[0] == 1 else np.take(a, indices, axis=0)

    gauss = None if corr.gauss is None else (take(corr.gauss[0]), take(corr.gauss[1]))
    centred = None if corr.centred is None else take(np.atleast_1d(corr.centred))
    return Correlation(take(corr.rho), take(corr.floor), gauss, centred)


def concat(parts: Sequence[tuple[Correlation | None, int]], sizes,
           gaussian: bool = False) -> Correlation:
    """Channel concatenation; an operand without correlation counts as independent. With
    ``gaussian`` (the operands share one element-wise chain of their source Gaussians, which
    the concatenation keeps) the Gaussians' correlations concatenate too, each operand's
    ``gaussian()``: a ReLU'd operand's values are less correlated than the Gaussian under
    them, and a max over a window after the concat reads the Gaussian's."""
    radius = [min(MAX_OFFSET, s - 1) for s in sizes]
    shape = tuple(2 * r + 1 for r in radius)
    rhos, floors, centred, g_rhos, g_floors = [], [], [], [], []
    for corr, channels in parts:
        corr = corr if corr is not None else independent(1, sizes)
        rhos.append(np.broadcast_to(_extended(corr.rho, corr.floor, radius), (channels, *shape)))
        floors.append(np.broadcast_to(corr.floor, (channels,)))
        centred.append(corr.batch_centred(channels))
        g_rho, g_floor = corr.gaussian()
        g_rhos.append(np.broadcast_to(_extended(g_rho, g_floor, radius), (channels, *shape)))
        g_floors.append(np.broadcast_to(g_floor, (channels,)))
    gauss = None
    if gaussian and any(corr is not None and corr.gauss is not None for corr, _ in parts):
        gauss = (np.concatenate(g_rhos), np.concatenate(g_floors))
    return Correlation(np.concatenate(rhos), np.concatenate(floors), gauss,
                       np.concatenate(centred))


__all__ = ["CONV_BUDGET", "MAX_OFFSET", "Correlation", "add", "concat", "conv", "independent",
           "mean_variance_factor", "product", "select", "window_pairs", "window_sum"]
