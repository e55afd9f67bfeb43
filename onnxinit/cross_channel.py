"""Cross-channel spatial correlation: how two channels of one sample co-vary at an offset.

``onnxinit.correlation`` carries, per channel, the correlation of a channel with itself at
offset d. That suffices for random weights: a convolution's cross terms ``W_jk W_jl Cov(x_k,
x_l)`` between different input channels have mean zero over random signs. Structured, sparse
kernels (IDInit's identity patterns, a Dirac kernel, hand-built filters) are not random: an
output channel sums a few input channels at a few taps with weights of one sign, and the input
channels are themselves shifted copies or sums of the same pixels, so the cross terms add up
(the output of a 16->16 patch-identity conv of a patch-identity stem's ReLU has twice the
variance of the independent sum).

What is modelled (``CrossField``): ``R[c, c', d] = Corr(x_c(p), x_c'(p + d))`` for offsets
``|d_i| <= R_i`` (``R_i = min(MAX_OFFSET, size_i - 1)``, as the per-channel correlation),
positions taken as stationary (the interior's correlation holds at the border), normalised by
each channel's within-position variance ``nu_c``; ``R[c, c, 0] = 1`` and ``R[c', c, -d] =
R[c, c', d]``. Zero beyond the stored offsets. ``gauss``: the same for the Gaussian an
element-wise chain starts from (None: the values are that Gaussian). The transfer rules:

* Conv with a sparse kernel (at most ``MAX_NONZEROS`` non-zeros per output channel and at most
  half of the kernel non-zero), output channel j summing entries k = (c_k, t_k) with weights
  ``w_jk``, exact for the stationary field::

      Cov(y_j(p), y_j'(p + d)) = sum_{k,l} w_jk w_j'l sqrt(nu_ck nu_cl) R[c_k, c_l, s d + dil (t_l - t_k)]
      Var_j(r) = sum_{k,l inside at r} w_jk w_jl R[c_k, c_l, dil (t_l - t_k)] sqrt(nu_ck(r_k) nu_cl(r_l))

  (``r``: a position class, ``nu(r_k)`` the input's variance in the class under tap k; taps
  in the zero padding add nothing). Cost ``C_out^2 nnz^2 offsets``. A tensor without a field
  counts as channels independent of each other (its per-channel correlation on the diagonal):
  that is how a field starts (the graph input's white noise). A dense kernel carries it where
  the transfer fits the budget (``rules/field_kernels.py``), else drops it.
  A kernel that copies (one non-zero per row) moves the Gaussian's field along with the
  values' (the copy keeps the input's element-wise chain).
* Element-wise f (Mehler's formula per pair of channels, with each channel's Hermite
  amplitudes ``a_n^c = E[f(z_c) He_n]``)::

      Cov(f(z_c), f(z_c')) = sum_n a_n^c a_n^c' R_z[c, c', d]^n / n!

* Add of independent operands: covariances add. A per-channel affine map with negative
  scales flips the signs of the pairs it touches.
* A residual block's branch carries its correlation with the block's input A (``Anchor``,
  created by a sparse Conv of a tensor read by several nodes, moved by later sparse Convs,
  by Stein's lemma through element-wise functions); the Add of A, or of a sparse Conv of A,
  and the branch adds their covariance (``operand_covariance``).

Every other op drops the field (what was done before: channels independent of each other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .correlation import recentred

MAX_NONZEROS = 16  # non-zeros per output channel up to which a Conv carries the field
ANCHOR_RADIUS = 24  # largest offset, on the anchor's grid, of a correlation with the anchor
FIELD_BUDGET = 2e7  # elements (and multiply-adds per pass) above which a Conv drops the field


@dataclass(frozen=True, eq=False)
class Anchor:
    """The correlation of a tensor t with an earlier tensor A of which it is a function (a
    residual block's input, for the tensors of its branch): ``corr[c, a, e] = Corr(t_c(p),
    A_a(stride p + origin + e))`` for ``|e_i| <= radius_i`` on A's grid; ``gauss`` the same for
    the Gaussian of t's element-wise chain."""

    name: str
    stride: tuple[int, ...]
    origin: tuple[int, ...]
    limit: tuple[int, ...]  # A's size - 1 per axis: no larger offset exists
    sd: np.ndarray  # A's standard deviation within a position, per channel
    corr: np.ndarray
    gauss: np.ndarray | None = None
    values_only: bool = False  # t copies A's values (a chain): no Gaussian correlation known

    def gaussian(self) -> np.ndarray:
        return self.gauss if self.gauss is not None else self.corr


@dataclass(frozen=True, eq=False)
class CrossField:
    """``corr[c, c', 2R_0+1, ...]``: correlation of channel c at p with channel c' at p + d
    (centre = offset 0); ``gauss`` the same for the Gaussian of the element-wise chain;
    ``anchor`` the tensor's correlation with an earlier tensor (:class:`Anchor`)."""

    corr: np.ndarray
    gauss: np.ndarray | None = None
    anchor: Anchor | None = None
    # [N, C]: standardised joint samples of all channels at one interior position, where the
    # law was sampled (rules/shared_source.py); read by an element-wise function that follows
    joint: np.ndarray | None = None

    @property
    def radius(self) -> tuple[int, ...]:
        return tuple((n - 1) // 2 for n in self.corr.shape[2:])

    def gaussian(self) -> np.ndarray:
        return self.gauss if self.gauss is not None else self.corr

    def diagonal(self, field: np.ndarray | None = None) -> np.ndarray:
        """The per-channel correlation ``rho_c(d) = R[c, c, d]`` ``[C, 2R+1, ...]``."""
        field = self.corr if field is None else field
        c = field.shape[0]
        return field[np.arange(c), np.arange(c)]


def from_diagonal(rho: np.ndarray, channels: int) -> np.ndarray:
    """The field of channels independent of each other, each with its own correlation
    ``rho`` ``[C or 1, 2R+1, ...]``: ``R[c, c', d] = rho_c(d) [c = c']``."""
    rho = np.broadcast_to(rho, (channels,) + rho.shape[1:])
    field = np.zeros((channels, channels) + rho.shape[1:])
    field[np.arange(channels), np.arange(channels)] = rho
    return field


def cropped(field: np.ndarray, radius: Sequence[int]) -> np.ndarray:
    """``field`` on the offsets ``|d_i| <= radius_i``, zero where it stores none."""
    return recentred(field, 2, radius, 0.0)


# --- convolution -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseKernel:
    """A kernel's non-zeros per output channel, padded to ``n`` with weight 0:
    ``channel[j, k]`` (input channel), ``tap[j, k, axis]``, ``weight[j, k]``."""

    channel: np.ndarray
    tap: np.ndarray
    weight: np.ndarray

    @property
    def copies(self) -> bool:
        return self.weight.shape[1] == 1


def sparse_kernel(w: np.ndarray, groups: int) -> SparseKernel | None:
    """The non-zeros of ``w`` ``[C_out, C_in/g, k...]`` per output channel, or None for a dense
    kernel (more than ``MAX_NONZEROS`` per row, or more than half of its entries)."""
    c_out, cpg = w.shape[:2]
    kernel = w.shape[2:]
    flat = w.reshape(c_out, -1)
    nonzero = flat != 0
    counts = nonzero.sum(axis=1)
    if counts.max(initial=0) > MAX_NONZEROS or 2 * counts.sum() > flat.size or counts.max() == 0:
        return None
    n = int(counts.max())
    order = np.argsort(~nonzero, axis=1, kind="stable")[:, :n]  # the non-zeros first
    rows = np.arange(c_out)[:, None]
    weight = np.where(nonzero[rows, order], flat[rows, order], 0.0)
    taps_per = int(np.prod(kernel))
    group = rows // (c_out // groups)
    channel = group * cpg + order // taps_per
    tap = np.stack(np.unravel_index(order % taps_per, kernel), axis=-1)
    return SparseKernel(channel, tap, weight)


def affordable(c_in: int, c_out: int, kern: SparseKernel, strides, dilations, out_radius,
               anchor_channels: int = 0) -> bool:
    """Whether carrying the field through this Conv stays within ``FIELD_BUDGET``: the output
    field ``C_out^2 prod(2R+1)``, each pass of :func:`conv_covariance` (``C_in C_out nnz``
    offsets) and the correlation with an anchor (``C_out C_A prod(2 ANCHOR_RADIUS + 1)``)."""
    nnz = kern.weight.shape[1]
    span = [int(kern.tap[..., a].max(initial=0)) * d for a, d in enumerate(dilations)]
    offsets = int(np.prod([2 * r + 1 for r in out_radius]))
    reach = int(np.prod([2 * (s * r + sp) + 1 for s, r, sp in zip(strides, out_radius, span)]))
    anchor = anchor_channels * (2 * ANCHOR_RADIUS + 1) ** len(out_radius)
    return max(c_out * c_out * offsets, c_in * c_out * reach * nnz, c_out * anchor) <= FIELD_BUDGET


def conv_covariance(field: np.ndarray, nu: np.ndarray, kern: SparseKernel, strides, dilations,
                    out_radius: Sequence[int], magnitudes: bool = False) -> np.ndarray:
    """``Cov(y_j(p), y_j'(p + d))`` ``[C_out, C_out, *d]`` for the stationary input field
    (correlations ``field``, variances ``nu`` ``[C_in]``), offsets ``|d_i| <= out_radius_i``.
    ``magnitudes``: with |w| (the field of a copy's Gaussian, which the weight's sign does not
    reach). In two passes over the non-zeros (``C_in C_out nnz`` offsets each, not
    ``C_out^2 nnz^2``)::

        Z[c, j', e] = sum_l w_j'l sqrt(nu_cl) R[c, c_l, e + dil t_l]
        Cov[j, j', d] = sum_k w_jk sqrt(nu_ck) Z[c_k, j', s d - dil t_k]
    """
    weight = np.abs(kern.weight) if magnitudes else kern.weight
    scaled = weight * np.sqrt(nu)[kern.channel]  # w_jk sqrt(nu_ck)
    c_in, c_out = field.shape[0], weight.shape[0]
    n = len(out_radius)
    span = [(int(kern.tap[..., a].max(initial=0))) * dilations[a] for a in range(n)]
    reach = [s * r + sp for s, r, sp in zip(strides, out_radius, span)]  # |e| <= reach
    padded = cropped(field, [r + sp for r, sp in zip(reach, span)])
    sizes = padded.shape[2:]
    flat = padded.reshape(-1).astype(np.float32)  # the large products in float32: 1e-7
    e_sizes = [2 * r + 1 for r in reach]
    z = np.zeros((c_in, c_out, *e_sizes), dtype=np.float32)
    for l in range(weight.shape[1]):
        index = (np.arange(c_in).reshape((-1, 1) + (1,) * n) * c_in
                 + kern.channel[:, l].reshape((1, -1) + (1,) * n))
        for a in range(n):
            shape = [1, c_out] + [1] * n
            shape[2 + a] = e_sizes[a]
            pos = (np.arange(-reach[a], reach[a] + 1)[None, :]
                   + dilations[a] * kern.tap[:, l, a][:, None] + reach[a] + span[a])
            index = index * sizes[a] + pos.reshape(shape)
        z += scaled[:, l].reshape((1, -1) + (1,) * n).astype(np.float32) * flat.take(index)
    zflat = z.reshape(-1)
    cov = np.zeros((c_out, c_out, *(2 * r + 1 for r in out_radius)))
    for k in range(weight.shape[1]):
        index = (kern.channel[:, k].reshape((-1, 1) + (1,) * n) * c_out
                 + np.arange(c_out).reshape((1, -1) + (1,) * n))
        for a in range(n):
            shape = [c_out, 1] + [1] * n
            shape[2 + a] = 2 * out_radius[a] + 1
            pos = (strides[a] * np.arange(-out_radius[a], out_radius[a] + 1)[None, :]
                   - dilations[a] * kern.tap[:, k, a][:, None] + reach[a])
            index = index * e_sizes[a] + pos.reshape(shape)
        cov += scaled[:, k].reshape((-1, 1) + (1,) * n) * zflat.take(index)
    return cov


def class_variance(field: np.ndarray, sd_taps: np.ndarray, kern: SparseKernel,
                   dilations) -> np.ndarray:
    """Per output channel and position class, ``Var_j(r) = sum_{k,l} w_jk w_jl R[c_k, c_l,
    dil (t_l - t_k)] sd_k(r) sd_l(r)``; ``sd_taps`` ``[C_in, T_0, .., R_0, ..]``: the input's
    standard deviation in the class under each tap (0 in the padding). ``[C_out, R_0, ...]``."""
    c_out, n = kern.weight.shape
    axes = kern.tap.shape[2]
    radius = [(m - 1) // 2 for m in field.shape[2:]]
    index = kern.channel[:, :, None] * field.shape[1] + kern.channel[:, None, :]  # [j, k, l]
    valid = np.ones(index.shape, dtype=bool)
    for a in range(axes):
        step = (kern.tap[:, None, :, a] - kern.tap[:, :, None, a]) * dilations[a]
        valid &= np.abs(step) <= radius[a]
        index = index * field.shape[2 + a] + np.clip(step, -radius[a], radius[a]) + radius[a]
    pair = np.where(valid, field.reshape(-1).take(index), 0.0)
    index = (kern.channel,) + tuple(kern.tap[..., a] for a in range(axes))
    sd = sd_taps[index]  # [C_out, n, R_0, ...]
    ws = kern.weight.reshape((c_out, n) + (1,) * (sd.ndim - 2)) * sd
    flat = ws.reshape(c_out, n, -1)
    var = np.einsum("jkr,jkl,jlr->jr", flat, pair, flat)
    return np.maximum(var, 0.0).reshape((c_out,) + sd.shape[2:])


def normalised(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correlation field, per-channel variance ``Cov_jj(0)``) of a covariance field."""
    c = cov.shape[0]
    centre = tuple(((n - 1) // 2) for n in cov.shape[2:])
    var = cov[(np.arange(c), np.arange(c), *centre)]
    sd = np.sqrt(np.where(var > 0, var, 1.0))
    n = cov.ndim - 2
    corr = cov / (sd.reshape((-1, 1) + (1,) * n) * sd.reshape((1, -1) + (1,) * n))
    corr[(np.arange(c), np.arange(c), *centre)] = 1.0
    return np.clip(corr, -1.0, 1.0), var


# --- element-wise functions and sums -----------------------------------------------------------


def mehler(gauss: np.ndarray, amplitudes: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """The correlation field of ``f_c(z_c)``: ``sum_n a_n^c a_n^c' R_z^n / n!`` divided by
    ``sqrt(Var f_c Var f_c')``; ``amplitudes`` ``[N, C]`` (``a_n = E[f(z) He_n(z)]``, n = 1..N),
    ``variance`` ``[C]`` within a position."""
    n = gauss.ndim - 2
    out = np.zeros_like(gauss)
    power = np.ones_like(gauss)
    for k, a in enumerate(amplitudes):
        power = power * gauss
        out += (a.reshape((-1, 1) + (1,) * n) * a.reshape((1, -1) + (1,) * n)
                / math.factorial(k + 1)) * power
    sd = np.sqrt(np.where(variance > 0, variance, 1.0))
    out /= sd.reshape((-1, 1) + (1,) * n) * sd.reshape((1, -1) + (1,) * n)
    c = gauss.shape[0]
    centre = tuple((m - 1) // 2 for m in gauss.shape[2:])
    out[(np.arange(c), np.arange(c), *centre)] = 1.0
    return np.clip(out, -1.0, 1.0)


def signed(field: CrossField, sign: np.ndarray) -> CrossField:
    """The field of ``a_c x_c + b_c`` (per-channel ``sign`` of a_c, ``[C]``): pairs of channels
    with opposite signs change sign, and so does a channel's correlation with the anchor; the
    Gaussian's fields are the chain's, unchanged."""
    n = field.corr.ndim - 2
    s = np.sign(sign).astype(np.float64)
    s = np.where(s == 0, 1.0, s)
    flip = s.reshape((-1, 1) + (1,) * n) * s.reshape((1, -1) + (1,) * n)
    anchor = field.anchor
    if anchor is not None:
        anchor = replace(anchor, corr=anchor.corr * s.reshape((-1, 1) + (1,) * n))
    return CrossField(field.corr * flip, field.gauss, anchor)


# --- the correlation with an anchor (residual branches) -----------------------------------------


def anchor_conv(x: np.ndarray, sd_in: np.ndarray, kern: SparseKernel, stride, dilations,
                sd_out: np.ndarray, limit, magnitudes: bool = False) -> np.ndarray:
    """A Conv's correlation with the anchor, from its input's ``x`` ``[C_in, C_A, e]`` (input
    stride ``stride`` on A's grid): ``Corr(y_j(q), A_a(S' q + o' + e)) = sum_k w_jk sd_ck
    x[c_k, a, e - S dil t_k] / sd_j`` (S' = S s, o' = o - S pad: the caller's), zero where
    the offset is not stored; the offsets grow by the kernel's extent, up to ``limit`` (A's
    size - 1) and ``ANCHOR_RADIUS``. ``[C_out, C_A, e]``."""
    weight = np.abs(kern.weight) if magnitudes else kern.weight
    scaled = weight * sd_in[kern.channel]
    c_out = weight.shape[0]
    c_a = x.shape[1]
    radius = [(m - 1) // 2 for m in x.shape[2:]]
    n = len(radius)
    # the offsets reached grow by the kernel's extent on A's grid (up to ANCHOR_RADIUS)
    grown = [min(ANCHOR_RADIUS, lim, max(r, r + st * dl * int(kern.tap[..., a].max(initial=0))))
             for a, (r, st, dl, lim) in enumerate(zip(radius, stride, dilations, limit))]
    flat = x.reshape(-1)
    out = np.zeros((c_out, c_a, *(2 * g + 1 for g in grown)))
    for k in range(weight.shape[1]):
        index = (kern.channel[:, k].reshape((-1, 1) + (1,) * n) * c_a
                 + np.arange(c_a).reshape((1, -1) + (1,) * n))
        valid = True
        for a in range(n):
            shape = [c_out, 1] + [1] * n
            shape[2 + a] = 2 * grown[a] + 1
            pos = (np.arange(-grown[a], grown[a] + 1)[None, :]
                   - stride[a] * dilations[a] * kern.tap[:, k, a][:, None]).reshape(shape)
            valid = valid & (np.abs(pos) <= radius[a])
            index = index * (2 * radius[a] + 1) + np.clip(pos, -radius[a], radius[a]) + radius[a]
        out += scaled[:, k].reshape((-1, 1) + (1,) * n) * np.where(valid, flat.take(index), 0.0)
    sd = np.where(sd_out > 0, sd_out, 1.0)
    return np.clip(out / sd.reshape((-1, 1) + (1,) * n), -1.0, 1.0)


def operand_covariance(kern: SparseKernel, stride, dilations, origin_a, sd_anchor: np.ndarray,
                       anchor_b: Anchor, sd_b: np.ndarray, out_radius) -> np.ndarray:
    """``Cov(a_j(q), b_j'(q + d))`` ``[C_a, C_b, *d]`` for a = Conv(A) (``kern``, stride S =
    b's, origin ``origin_a`` = -pad on A's grid; an identity for a = A) and b with anchor A::

        sum_k w_jk sd_A(c_k) sd_b(j') X_b[j', c_k, o_a - o_b + dil t_k - S d]
    """
    x = anchor_b.corr
    c_a, c_b = kern.weight.shape[0], x.shape[0]
    radius = [(m - 1) // 2 for m in x.shape[2:]]
    n = len(radius)
    flat = x.reshape(-1)
    scaled = kern.weight * sd_anchor[kern.channel]
    cov = np.zeros((c_a, c_b, *(2 * r + 1 for r in out_radius)))
    for k in range(kern.weight.shape[1]):
        index = (np.arange(c_b).reshape((1, -1) + (1,) * n) * x.shape[1]
                 + kern.channel[:, k].reshape((-1, 1) + (1,) * n))
        valid = True
        for a in range(n):
            shape = [c_a, 1] + [1] * n
            shape[2 + a] = 2 * out_radius[a] + 1
            pos = ((origin_a[a] - anchor_b.origin[a]) + dilations[a] * kern.tap[:, k, a][:, None]
                   - stride[a] * np.arange(-out_radius[a], out_radius[a] + 1)[None, :])
            pos = pos.reshape(shape)
            valid = valid & (np.abs(pos) <= radius[a])
            index = index * (2 * radius[a] + 1) + np.clip(pos, -radius[a], radius[a]) + radius[a]
        cov += scaled[:, k].reshape((-1, 1) + (1,) * n) * np.where(valid, flat.take(index), 0.0)
    return cov * sd_b.reshape((1, -1) + (1,) * n)


def identity_kernel(channels: int, axes: int) -> SparseKernel:
    """``a = A`` as a kernel: one tap, weight 1, channel j from channel j."""
    return SparseKernel(np.arange(channels)[:, None], np.zeros((channels, 1, axes), np.int64),
                        np.ones((channels, 1)))


def add(parts: Sequence[tuple[np.ndarray, np.ndarray]], radius) -> np.ndarray:
    """Sum of independent operands, each ``(field, nu [C])``: covariances add; the correlation
    field of the sum."""
    cov = 0.0
    for field, nu in parts:
        sd = np.sqrt(nu)
        n = field.ndim - 2
        cov = cov + cropped(field, radius) * (sd.reshape((-1, 1) + (1,) * n)
                                              * sd.reshape((1, -1) + (1,) * n))
    return normalised(cov)[0]


__all__ = ["FIELD_BUDGET", "MAX_NONZEROS", "Anchor", "CrossField", "SparseKernel", "add",
           "affordable", "anchor_conv",
           "class_variance", "conv_covariance", "cropped", "from_diagonal", "identity_kernel",
           "mehler", "normalised", "operand_covariance", "signed", "sparse_kernel"]
