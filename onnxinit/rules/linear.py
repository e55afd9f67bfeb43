"""Linear layers with constant weights: Conv, ConvTranspose, Gemm, MatMul.

All use the weight-aware rule: for ``y_j = sum_i W_ji x_i + b_j`` with independent inputs of
per-feature mean ``mu_i`` and variance ``nu_i``::

    E[y_j]   = sum_i W_ji mu_i + b_j
    Var[y_j] = sum_i W_ji^2 nu_i

For convolutions ``i`` runs over the receptive field (C_in/groups x kernel taps) and zero padding
is exact: an output position only sums the taps that land inside the input. Conv keeps the
statistics per position class (``onnxinit.spatial``: border rings and the interior), whatever the
map size (:mod:`.conv_output`); ConvTranspose is the Conv of its zero-upsampled input
(:mod:`onnxinit.upsampled`), its classes the stride's phases and the border's, and reads its
input's spatial correlation at the offsets its taps combine (:mod:`.tap_pairs`).
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..spatial import positions, window
from ..upsampled import zero_upsampled
from ..views import broadcast_to
from .attention import matmul_activations
from .covariance_readers import cross_term_factor, feature_cross_term_factor
from .group_conv_variance import group_read_factor
from .conv_output import conv_cells, conv_output
from .field_kernels import dense_convs
from .conv_geometry import begin_pads
from .pooled_energy import shared_cross_terms
from .pooled_features import cross_terms, pooled_correlation
from .context import RuleContext, RuleError, signal
from .registry import rule
from .stacked_weights import stacked_matmul
from .tap_pairs import pair_variance
from .weighted import weighted_sums


def _geometry(ctx: RuleContext, w_shape):
    x_shape, y_shape = ctx.in_shape(0), ctx.out_shape(0)
    n = len(w_shape) - 2
    kernel = list(ctx.attr("kernel_shape", w_shape[2:]))
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    return x_shape, y_shape, kernel, strides, dilations


def _bias(ctx: RuleContext, index: int, size: int) -> np.ndarray:
    b = ctx.const(index)
    if b is None:
        if ctx.has_input(index):
            raise RuleError("bias is not constant")
        return np.zeros(size)
    return broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1), (size,))


def trimmed_kernel(w: np.ndarray, kernel, begins, dilations):
    """(w, kernel, begins) with the kernel cut to the bounding box of its non-zero taps: a tap
    whose weight is zero for every channel pair reads nothing, so along each axis with first
    and last non-zero tap lo and hi the Conv is the one of kernel ``hi - lo + 1`` and begin
    pad ``begin - lo dil`` (output q reads ``q s - begin + t dil`` either way). The position
    classes then follow the taps that read: a centre-tap (Dirac) kernel's output has no
    border ring, its padding being read by zero weights only. Unchanged for an all-zero
    kernel."""
    if all(k == 1 for k in w.shape[2:]):  # one tap: nothing to cut
        return w, list(kernel), list(begins)
    nonzero = (np.abs(w) > 0).any(axis=(0, 1))  # per tap: read by some channel pair
    if not nonzero.any():
        return w, list(kernel), list(begins)
    index, kernel, begins = [slice(None), slice(None)], list(kernel), list(begins)
    for d in range(w.ndim - 2):
        used = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(w.ndim - 2) if a != d)))
        lo, hi = int(used[0]), int(used[-1])
        index.append(slice(lo, hi + 1))
        kernel[d] = hi - lo + 1
        begins[d] = begins[d] - lo * dilations[d]
    return w[tuple(index)], kernel, begins


@rule("Conv")
def conv(inputs, ctx: RuleContext):
    """Conv, groups and dilations included, weight-aware, per output channel and position
    class, with exact zero padding:

        E_j(p)   = b_j + sum_{c in group(j), t inside at p} W_jct mu_c(p*s - pad + t*dil)
        Var_j(p) = sum_{c in group(j), t inside at p} W_jct^2 nu_c(p*s - pad + t*dil)

    Positions are grouped in classes (``onnxinit.spatial``): along each axis, the output
    indices whose taps see the same input classes (or padding) share their statistics, so the
    work and the memory follow the number of classes (border rings plus one interior class),
    not the map size. The per-channel totals (E_j = mean_p E_j(p), Var_j = mean_p Var_j(p) +
    var_p E_j(p)) are the output's ``mean``/``var``; the classes are carried in ``spatial``:
    border positions of a padded conv have other means and a smaller variance, which ReLU,
    pooling, normalization and later convs see. A kernel that copies (one non-zero per
    output channel: IDInit's identity patterns) keeps the input's distribution
    (:mod:`.copies`).
    """
    x = signal(inputs, 0)
    w = ctx.const(1)
    if w is None:
        raise RuleError("the weight is not constant")
    w = np.asarray(w, dtype=np.float64)
    x_shape, y_shape, kernel, strides, dilations = _geometry(ctx, w.shape)
    groups = ctx.attr("group", 1)
    c_out = w.shape[0]
    begins = begin_pads(ctx, x_shape[2:], y_shape[2:], kernel, strides, dilations)
    w, kernel, begins = trimmed_kernel(w, kernel, begins, dilations)
    sp = positions(x, x_shape)
    if sp is None:
        raise RuleError("a Conv without spatial axes")
    factor = cross_term_factor(ctx, w)  # correlated input channels (a 1x1 Conv's output)
    if factor is None:  # read by a GroupNorm's statistics: the input's patch covariance
        factor = group_read_factor(ctx, w)
    pointwise_pool = (groups == 1 and all(k == 1 for k in kernel)
                      and all(d == 1 for d in x_shape[2:]))

    def adjust(var):
        if factor is not None:
            var = var * factor.reshape((-1,) + (1,) * (var.ndim - 1))
        if pointwise_pool:
            shared = shared_cross_terms(ctx, w.reshape(c_out, -1).T)  # squeeze-excite conv
            if shared is not None:
                var = np.maximum(var + shared.reshape((-1,) + (1,) * (var.ndim - 1)), 0.0)
        return var

    return [conv_output(sp, w, _bias(ctx, 2, c_out), groups, strides, dilations, begins,
                        y_shape[2:], adjust, name=ctx.node.input[0],
                        fork=len(ctx.graph.consumers.get(ctx.node.input[0], ())) > 1,
                        covariance_known=factor is not None,
                        dense_allowed=ctx.node_id in dense_convs(ctx.graph))]


def conv_tap_sums(ctx: RuleContext, x: Moments, values: np.ndarray, power: int,
                  weight: np.ndarray | None = None):
    """``sum_{c in group(j), t inside at r} W_jct^power v_c(class under t)`` per output channel
    j and position class r of this Conv (``[C_out, R_0, ...]``, the classes of the conv rule's
    output), for per-input-cell ``values`` ``[C_in, K_0, ...]`` on ``x``'s position classes:
    the cumulants of independent inputs add this way (power 3, 4). ``weight``: a one-group
    kernel of this Conv's geometry to use instead of its own (a 1x1 Conv composed with it).
    None for a non-constant weight or a Conv without spatial axes."""
    w = ctx.const(1) if weight is None else weight
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64)
    x_shape, y_shape, kernel, strides, dilations = _geometry(ctx, w.shape)
    begins = begin_pads(ctx, x_shape[2:], y_shape[2:], kernel, strides, dilations)
    w, kernel, begins = trimmed_kernel(w, kernel, begins, dilations)
    sp = positions(x, x_shape)
    if sp is None:
        return None
    taps = [window(sp.maps[d], y_shape[2 + d], kernel[d], strides[d], dilations[d],
                   begins[d])[1] for d in range(len(kernel))]
    values = np.broadcast_to(values, (x_shape[1],) + sp.classes)
    sums, _ = conv_cells(values, np.zeros_like(values), w**power, np.zeros(w.shape[0]),
                          ctx.attr("group", 1) if weight is None else 1, taps)
    return sums


@rule("ConvTranspose")
def conv_transpose(inputs, ctx: RuleContext):
    """ConvTranspose, W[C_in, C_out/g, k...]: output position o receives tap k of input i when
    ``i*stride - pad_begin + k*dilation == o``. That is the stride-1 Conv, kernel flipped and
    channel axes swapped (``V[g C_out/g + j, c, K - 1 - k] = W[g C_in/g + c, j, k]``), begin
    pad ``(K - 1) dilation - pad_begin``, of the zero-upsampled input (:mod:`onnxinit.upsampled`:
    the inserted zeros one position class of their own), so the Conv rule's output applies:
    per output channel j and position class r (the taps that reach it),

        E_j(r)   = b_j + sum_{c in group(j), k reaching r} W_cjk mu_c
        Var_j(r) = sum_{c in group(j), k, k' reaching r} W_cjk W_cjk' sd_c sd_c' rho_c(i' - i)

    the cross terms at the input offsets ``i' - i = dil (k - k') / s`` of the taps
    (:mod:`.tap_pairs`; the cross-channel field's own where the input carries one), and the
    output's correlation averaged over the stride's phases for what follows.
    """
    x = signal(inputs, 0)
    w = ctx.const(1)
    if w is None:
        raise RuleError("the weight is not constant")
    w = np.asarray(w, dtype=np.float64)
    x_shape, y_shape, kernel, strides, dilations = _geometry(ctx, w.shape)
    groups = ctx.attr("group", 1)
    c_in, opg = w.shape[0], w.shape[1]
    c_out, n = opg * groups, len(kernel)
    pads = begin_pads(ctx, x_shape[2:], y_shape[2:], kernel, strides, dilations,
                      transpose=True)
    sp = positions(x, x_shape)
    if sp is None:
        raise RuleError("a ConvTranspose without spatial axes")
    v = w.reshape((groups, c_in // groups, opg) + w.shape[2:]).swapaxes(1, 2)
    v = np.flip(v.reshape((c_out, c_in // groups) + w.shape[2:]), axis=tuple(range(2, 2 + n)))
    begins = [(k - 1) * d - p for k, d, p in zip(kernel, dilations, pads)]
    v, _, begins = trimmed_kernel(np.ascontiguousarray(v), kernel, begins, dilations)
    upsampled = any(s > 1 for s in strides)

    def pairs(up, nu_cells, taps, var):
        return pair_variance(up.corr, nu_cells, v, groups, taps, dilations, var)

    zeros = [k if s > 1 else -2 for k, s in zip(sp.classes, strides)] if upsampled else None
    return [conv_output(zero_upsampled(sp, strides) if upsampled else sp, v,
                        _bias(ctx, 2, c_out), groups, [1] * n, dilations, begins, y_shape[2:],
                        pairs=pairs, name=ctx.node.input[0],
                        fork=len(ctx.graph.consumers.get(ctx.node.input[0], ())) > 1,
                        anchors=not upsampled, zeros=zeros)]


def _leading(x: Moments, rank: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """x's (mean, var) at ``rank`` with the contracted last axis (size ``k``) made explicit,
    when x tracks an axis other than the last (per-position statistics); else None."""
    x = x.expand_rank(rank)
    if x.rank != rank or not any(a != rank - 1 for a in x.tracked_axes()):
        return None
    mean, var = np.broadcast_arrays(x.mean, x.var)
    shape = mean.shape[:-1] + (k,)
    return np.broadcast_to(mean, shape), np.broadcast_to(var, shape)


def _dense(mu, nu, w_in_out: np.ndarray, bias: np.ndarray | float = 0.0, scale: float = 1.0):
    """E_j = scale * sum_i W_ij mu_i + bias_j; Var_j = scale^2 * sum_i W_ij^2 nu_i (the weight
    in its own dtype, read a block at a time: :func:`~onnxinit.rules.weighted.weighted_sums`)."""
    wmu, wnu = weighted_sums(mu, nu, w_in_out)
    return scale * wmu + bias, scale**2 * wnu


def _pooled(ctx: RuleContext, skip: bool, nu, w, var, scale: float = 1.0):
    """``var`` plus the cross terms of correlated pooled channels when the input is a global
    spatial mean of a tensor with a cross-channel field (:mod:`.pooled_features`)."""
    if skip:
        return var
    shared = shared_cross_terms(ctx, w)  # the pooled channels' shared energy
    if shared is not None:
        var = np.maximum(var + scale**2 * shared, 0.0)
    corr = pooled_correlation(ctx, ctx.node.input[0], w.shape[0])
    if corr is None:
        return var
    return np.maximum(var + scale**2 * cross_terms(corr, nu, w), 0.0)


def _row_bias(ctx: RuleContext, y_shape) -> tuple[np.ndarray, np.ndarray | float]:
    """Gemm's C broadcast to ``[M, N]``, per column over the M rows (the samples): its mean
    and, when it differs from row to row, its variance (the rows' spread adds to Y's)."""
    c = ctx.const(2)
    if c is None or np.ndim(c) < 2 or np.shape(c)[0] == 1:
        return _bias(ctx, 2, y_shape[1]), 0.0
    c = np.broadcast_to(np.asarray(c, dtype=np.float64), tuple(y_shape))
    return c.mean(axis=0), c.var(axis=0)


@rule("Gemm")
def gemm(inputs, ctx: RuleContext):
    """Y = alpha * A' B' + beta * C with one constant operand W (A' = A or A^T):

        E_j = alpha * sum_i W_ij mu_i + beta * C_j,   Var_j = alpha^2 * sum_i W_ij^2 nu_i
    """
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    y_shape = ctx.out_shape(0)
    if inputs[0] is not None and ctx.const(1) is not None:
        x = inputs[0]
        w = ctx.const(1)
        w = w.T if trans_b else w  # [K, N]
        c, c_var = _row_bias(ctx, y_shape) if ctx.has_input(2) else (0.0, 0.0)
        factor = None if trans_a else feature_cross_term_factor(ctx, w)  # correlated features
        factor = 1.0 if factor is None else factor
        kept = None if trans_a else _leading(x, 2, w.shape[0])
        if kept is not None:  # per row (position) and feature
            mean, var = _dense(*kept, w, beta * c, alpha)
            return [Moments(mean, var * factor + beta**2 * c_var)]
        mu, nu = x.values_along(0 if trans_a else 1, w.shape[0])
        mean, var = _dense(mu, nu, w, beta * c, alpha)
        var = _pooled(ctx, trans_a, nu, w, var * factor, alpha) + beta**2 * c_var
        return [Moments.along(mean, var, 1, 2)]
    if inputs[1] is not None and ctx.const(0) is not None:
        x = inputs[1]
        w = ctx.const(0)
        w = w.T if trans_a else w  # [M, K]: Y[m, n] = sum_k W[m, k] X[k, n]
        mu, nu = x.values_along(1 if trans_b else 0, w.shape[1])
        c = ctx.const(2) if ctx.has_input(2) else None
        if c is not None and np.asarray(c).size > 1:
            c = np.broadcast_to(np.asarray(c, dtype=np.float64), y_shape)
            if not np.allclose(c, c[:, :1]):
                raise RuleError("a bias varying along both axes")
            c = c[:, 0]
        mean, var = _dense(mu, nu, w.T, beta * (0.0 if c is None else c), alpha)
        return [Moments.along(mean, var, 0, 2)]
    raise RuleError("Gemm of two activations")


@rule("MatMul")
def matmul_const(inputs, ctx: RuleContext):
    """MatMul with one constant 2-D operand (dense layer); two activations go to attention.

    X[..., K] @ W[K, N]: per output feature j, E_j = sum_k W_kj mu_k, Var_j = sum_k W_kj^2 nu_k
    (per row as well when X's statistics vary along another axis: per position).
    W[M, K] @ X[..., K, N]: per row m along axis -2, E_m = sum_k W_mk mu_k, Var likewise.
    """
    if inputs[0] is not None and inputs[1] is not None:
        return matmul_activations(inputs, ctx)
    y_rank = len(ctx.out_shape(0))
    if inputs[0] is not None:
        w = ctx.const(1)
        if w is not None and np.ndim(w) > 2 and len(ctx.in_shape(0)) >= 2:
            return [stacked_matmul(inputs[0], w, y_rank, weight_first=False)]
        if w is None or np.ndim(w) != 2:
            raise RuleError("MatMul with a non-2-D constant weight")
        factor = feature_cross_term_factor(ctx, w)  # correlated features (a patch embedding)
        factor = 1.0 if factor is None else factor
        kept = _leading(inputs[0], y_rank, w.shape[0])
        if kept is not None:  # per position and feature: the same formula row by row
            mean, var = _dense(*kept, w)
            return [Moments(mean, var * factor)]
        mu, nu = inputs[0].values_along(-1, w.shape[0])
        mean, var = _dense(mu, nu, w)
        return [Moments.along(mean, _pooled(ctx, y_rank != 2, nu, w, var * factor), -1,
                              y_rank)]
    w = ctx.const(0)
    if w is not None and np.ndim(w) > 2 and len(ctx.in_shape(1)) >= 2:
        return [stacked_matmul(inputs[1], w, y_rank, weight_first=True)]
    if w is None or np.ndim(w) != 2 or len(ctx.in_shape(1)) < 2:
        raise RuleError("MatMul with a non-2-D constant left operand")
    mu, nu = inputs[1].values_along(-2, w.shape[1])
    mean, var = _dense(mu, nu, w.T)
    return [Moments.along(mean, var, -2, y_rank)]
