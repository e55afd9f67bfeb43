"""The cross-channel correlation field (``onnxinit.cross_channel``) in the rules: created and
carried by a Conv with a sparse kernel, carried by element-wise functions and independent sums,
and read back as the Conv's output variance per position class and the per-channel correlation
(its diagonal). Each function returns what the rule computed without the field when the field
does not apply, so a rule's result changes only where the field exists."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from .. import correlation, cross_channel
from ..correlation import Correlation
from ..cross_channel import Anchor, CrossField
from ..moments import Moments, Source
from ..spatial import class_weights, gather_taps, joint, within_variance
from . import shared_source
from .field_kernels import dense_covariance, field_kernel, field_variance
from .gaussian import compose
from .mixture import relu_plus_linear, sum_mixture


def _input_field(corr_in: Correlation | None, channels: int, sizes) -> CrossField:
    """The input's field; channels independent of each other when it carries none."""
    if corr_in is not None and corr_in.cross is not None:
        return corr_in.cross
    corr_in = corr_in if corr_in is not None else correlation.independent(1, sizes)
    gauss = None
    if corr_in.gauss is not None:
        gauss = cross_channel.from_diagonal(corr_in.gauss[0], channels)
    return CrossField(cross_channel.from_diagonal(corr_in.rho, channels), gauss)


def _anchor(field: CrossField, name: str, sizes, sd_in, kern, strides, dilations, begins,
            sd_out, chained: bool, fork: bool):
    """The output's correlation with the input itself when the input is read by several
    nodes (``fork``: a residual block's input, for the first conv of its branch), else with
    the input's anchor (the later convs of the branch)."""
    n = len(strides)
    anchor = None if fork else field.anchor
    if anchor is None:  # a copy of A's values (chained) keeps only their correlation
        anchor = Anchor(name, (1,) * n, (0,) * n, tuple(s - 1 for s in sizes), sd_in,
                        field.corr, values_only=chained)
    elif chained and anchor.gauss is None and not anchor.values_only:
        return None
    x = cross_channel.anchor_conv(anchor.corr, sd_in, kern, anchor.stride, dilations, sd_out,
                                  anchor.limit)
    gauss, values_only = None, chained and anchor.values_only
    if chained and not values_only:
        gauss = cross_channel.anchor_conv(anchor.gauss, np.ones_like(sd_in), kern, anchor.stride,
                                          dilations, np.abs(kern.weight[:, 0]), anchor.limit,
                                          magnitudes=True)
    stride = tuple(a * s for a, s in zip(anchor.stride, strides))
    origin = tuple(o - a * b for o, a, b in zip(anchor.origin, anchor.stride, begins))
    return Anchor(anchor.name, stride, origin, anchor.limit, anchor.sd, x, gauss, values_only)


def conv(sp, nu_cells: np.ndarray, w: np.ndarray, groups: int, strides, dilations, taps,
         var: np.ndarray, corr: Correlation, chained: bool, name: str = "",
         begins=None, fork: bool = False, covariance_known: bool = False,
         dense_allowed: bool = True, anchors: bool = True) -> tuple[np.ndarray, Correlation]:
    """A Conv's per-class output variance ``var`` ``[C_out, R...]`` and correlation ``corr``
    with the cross-channel field when the kernel is sparse (``cross_channel.sparse_kernel``)
    or dense within the budget (:mod:`.field_kernels`); over it, the variance alone from the
    input's field where affordable; unchanged otherwise. ``nu_cells`` ``[C_in, K...]``: the
    input's variance per class;
    ``chained``: the output keeps the input's element-wise chain (a copy), so the field of
    its Gaussian is the input's Gaussian's, moved like the values. ``covariance_known``: ``var``
    already has the input channels' covariance (``channel_covariance``), which a dense
    kernel's field from independent channels would undo: it starts none then. A dense kernel
    that starts a field keeps the rule's ``var`` (which may hold other covariance, a pooled
    energy's: ``pooled_energy``). ``dense_allowed``: the Conv is one of the graph's first
    dense ones (``field_kernels.dense_convs``)."""
    c_in = w.shape[1] * groups
    held = sp.corr.cross if sp.corr is not None else None
    kern, dense = field_kernel(w, groups, strides, dilations, corr.radius, dense_allowed)
    if dense and held is None and covariance_known:
        return var, corr
    if dense and sp.corr is not None and sp.corr.energy_pairs:  # rho holds more than the
        kern = None  # field's Gaussian pairs (rules/pool_pairs.py): the variance alone
    if kern is None:
        return field_variance(held, w, groups, nu_cells, taps, dilations, var), corr
    anchored = held.anchor.corr.shape[1] if held is not None and held.anchor is not None \
        and not fork else c_in
    if not cross_channel.affordable(c_in, w.shape[0], kern, strides, dilations, corr.radius,
                                    anchored):  # checked before a field of C_in^2 offsets is built
        return field_variance(held, w, groups, nu_cells, taps, dilations, var, kern), corr
    field = _input_field(sp.corr, c_in, [m.size for m in sp.maps])
    if field.corr.shape[0] != c_in:
        return var, corr
    nu = within_variance(sp, c_in)
    cov = (dense_covariance(field.corr, nu, w, strides, dilations, corr.radius)
           if dense and groups == 1 else
           cross_channel.conv_covariance(field.corr, nu, kern, strides, dilations, corr.radius))
    out, out_var = cross_channel.normalised(cov)
    begins = [0] * len(strides) if begins is None else begins
    anchor = None if dense or not anchors else _anchor(
        field, name, [m.size for m in sp.maps], np.sqrt(nu), kern, strides, dilations, begins,
        np.sqrt(out_var), chained and kern.copies, fork)
    sd_taps = gather_taps(np.sqrt(nu_cells), taps)
    if not (dense and held is None):  # a field from independent channels: var is the rule's
        var = cross_channel.class_variance(field.corr, sd_taps, kern, dilations)
    gauss, gauss_pair = None, corr.gauss
    if chained and kern.copies:
        moved = cross_channel.conv_covariance(field.gaussian(), np.ones(c_in), kern, strides,
                                              dilations, corr.radius, magnitudes=True)
        gauss = cross_channel.normalised(moved)[0]
        gauss_pair = (CrossField(gauss).diagonal(), corr.floor)
    cross = CrossField(out, gauss, anchor)
    return var, replace(corr, rho=cross.diagonal(), gauss=gauss_pair, cross=cross)


def elementwise(corr: Correlation, amplitudes: np.ndarray, variance: np.ndarray,
                rho: Correlation) -> Correlation:
    """``rho`` (the per-channel correlation of f(z)) with the field of f(z) by Mehler's
    formula per pair of channels, when ``corr`` (z's correlation) carries one."""
    cross = corr.cross
    if cross is None or cross.corr.shape[0] != amplitudes.shape[1]:
        return rho
    gauss = cross_channel.cropped(cross.gaussian(), rho.radius)
    anchor = cross.anchor if cross.anchor is None or not cross.anchor.values_only else None
    if anchor is not None:  # Stein: Corr(f(z), A) = a_1 Corr(z, A) / sd(f(z))
        x = anchor.gaussian()
        gain = amplitudes[0] / np.sqrt(np.where(variance > 0, variance, 1.0))
        anchor = replace(anchor, corr=np.clip(gain.reshape((-1,) + (1,) * (x.ndim - 1)) * x,
                                              -1.0, 1.0), gauss=x)
    return replace(rho, cross=CrossField(cross_channel.mehler(gauss, amplitudes, variance),
                                         gauss, anchor))


def through_joint(corr: Correlation, x: Moments, fn, spatial) -> Correlation:
    """The field of ``f(x)`` for an x whose field carries joint draws of all channels on a
    window of positions (``CrossField.joint``, a residual sum's sampled law): ``Corr(f(x_c(p)),
    f(x_c'(p + d)))`` for the offsets the window holds, measured on the draws ``x_c = E_c +
    sd_c z_c`` (interior class) over every pair of positions d apart; the other offsets as
    they were; the draws of f(x), standardised, are kept as f(x)'s own (``joint``). ``corr``
    unchanged without draws."""
    cross = corr.cross
    if cross is None or cross.joint is None or spatial is None:
        return corr
    draws = cross.joint
    channels, window = draws.shape[1], draws.shape[2:]
    axes = len(spatial.maps)
    if cross.corr.shape[0] != channels or len(window) != axes:
        return corr
    rank = 2 + axes
    classes = (1, channels) + tuple(int(m.max()) + 1 for m in spatial.maps)
    mean, var = (shared_source.interior(np.broadcast_to(
        np.asarray(a, np.float64).reshape((1,) * (rank - np.ndim(a)) + np.shape(a)), classes),
        spatial) for a in (x.mean, x.var))
    flat = draws.reshape(len(draws), channels, -1)
    out = np.empty_like(flat)
    for q in range(flat.shape[2]):  # f may hold constants laid out per position class
        values = (mean + np.sqrt(var) * flat[:, :, q]).reshape((len(draws), channels)
                                                                + (1,) * axes)
        out[:, :, q] = shared_source.interior(
            np.asarray(compose((fn,))(values), np.float64)[:, None], spatial, lead=1)
    out = out.reshape(draws.shape)
    pooled = (0,) + tuple(range(2, rank))
    out = out - out.mean(axis=pooled, keepdims=True)
    sd = out.std(axis=pooled)
    field = cross.corr.copy()
    radius = [(n - 1) // 2 for n in field.shape[2:]]
    known = np.outer(sd > 0, sd > 0)
    norm = np.outer(np.where(sd > 0, sd, 1.0), np.where(sd > 0, sd, 1.0))
    for d in itertools.product(*[range(1 - n, n) for n in window]):
        if any(abs(di) > r for di, r in zip(d, radius)):
            continue
        first = tuple(slice(max(0, -di), n - max(0, di)) for di, n in zip(d, window))
        second = tuple(slice(max(0, di), n + min(0, di)) for di, n in zip(d, window))
        a = np.moveaxis(out[(slice(None), slice(None)) + first], 1, 0).reshape(channels, -1)
        b = np.moveaxis(out[(slice(None), slice(None)) + second], 1, 0).reshape(channels, -1)
        cov = a @ b.T / a.shape[1]
        at = (slice(None), slice(None)) + tuple(r + di for r, di in zip(radius, d))
        field[at] = np.where(known, np.clip(cov / norm, -1.0, 1.0), field[at])
    field[(np.arange(channels), np.arange(channels)) + tuple(radius)] = 1.0
    # the draws of f(x), standardised, are f(x)'s joint law: a later residual sum of copies
    # of f(x) reads them (shared_source.joint_law) instead of a copula of its marginals
    scale = np.where(sd > 0, sd, 1.0).reshape((1, channels) + (1,) * axes)
    cross = CrossField(field, cross.gauss, cross.anchor, joint=out / scale)
    rho = corr.rho
    if rho.shape == cross.diagonal().shape:
        rho = cross.diagonal()
    return replace(corr, rho=rho, cross=cross)


def affine(corr: Correlation, scale) -> Correlation:
    """The correlation of ``a x + b`` with per-channel ``a`` (layout ``[1, C, 1...]`` or a
    scalar) when the values' field is carried unchanged: pairs of opposite signs flip."""
    if corr.cross is None:
        return corr
    a = np.asarray(scale, dtype=np.float64)
    channels = corr.cross.corr.shape[0]
    if a.ndim < 2 or a.shape[1] == 1:
        sign = np.full(channels, np.sign(a.reshape(-1)[0]) if a.size else 1.0)
    elif any(n > 1 for n in a.shape[2:]) or a.shape[1] != channels:
        return replace(corr, cross=None)
    else:
        sign = np.sign(a.reshape(a.shape[:2])[0])
    return replace(corr, cross=cross_channel.signed(corr.cross, sign))


def add(out: Correlation, parts, channels: int, sizes) -> Correlation:
    """The field of a sum of independent operands, ``parts`` ``(Correlation, nu [C], signal)``
    (a constant: nu 0), added to ``out`` when an operand carries one and every signal operand
    has a per-position correlation of ``channels`` channels."""
    if not any(c.cross is not None for c, _, _ in parts):
        return out
    fields = []
    for corr, nu, is_signal in parts:
        if not is_signal:
            continue
        if corr.rho.shape[0] not in (1, channels) or corr.rho.ndim != 1 + len(sizes):
            return out
        field = (corr.cross.corr if corr.cross is not None
                 else cross_channel.from_diagonal(corr.rho, channels))
        if field.shape[0] != channels:
            return out
        fields.append((field, np.broadcast_to(nu, (channels,))))
    total = cross_channel.add(fields, out.radius)
    return replace(out, rho=CrossField(total).diagonal(), cross=CrossField(total))




def _operand_kernel(ctx, tensor: str, anchor: Anchor, channels: int, axes: int):
    """(kernel, stride, origin) of ``tensor`` as a function of ``anchor``'s tensor A: the
    identity when it is A, a sparse Conv's kernel when a Conv of A made it; else None."""
    if tensor == anchor.name:
        return (cross_channel.identity_kernel(channels, axes), (1,) * axes, (0,) * axes,
                [1] * axes)
    graph = ctx.graph
    node_id = graph.producer.get(tensor)
    if node_id is None:
        return None
    node = graph.node(node_id)
    w = graph.value(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    if w is None or node.input[0] != anchor.name or np.ndim(w) != 2 + axes:
        return None
    attrs = ctx.for_node(node_id)
    if attrs.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
        return None
    kern = cross_channel.sparse_kernel(np.asarray(w, np.float64), attrs.attr("group", 1))
    if kern is None:
        return None
    strides = tuple(attrs.attr("strides", [1] * axes))
    begins = tuple(attrs.attr("pads", [0] * 2 * axes))[:axes]
    dilations = attrs.attr("dilations", [1] * axes)
    return kern, strides, tuple(-b for b in begins), dilations


def residual_sum(ctx, op: str, operands, cells, var: np.ndarray, mixture, corr, channels: int):
    """Add/Sub of operands of which one (b) carries its correlation with the other (a) through
    an anchor (a is b's anchor A, or a sparse Conv of A: a residual block's skip and branch):
    the covariance the independent sum leaves out, per position class and in the field::

        Var(a +- b) = Var a + Var b +- 2 Cov(a_c(p), b_c(p))
        Cov_sum[c, c', d] = Cov_a + Cov_b +- (C_ab[c, c', d] + C_ab[c', c, -d])

    (``cross_channel.operand_covariance``); the sum is then described as Gaussian (its
    mixture assumed independent operands). Unchanged when no operand has such an anchor."""
    if op not in ("Add", "Sub") or corr is None or len(operands) != 2:
        return var, mixture, corr
    axes = len(operands[0].maps)
    found = None
    for i, j in ((0, 1), (1, 0)):
        b = operands[j].corr
        anchor = b.cross.anchor if b is not None and b.cross is not None else None
        if anchor is None or anchor.corr.shape[0] != channels:
            continue
        made = _operand_kernel(ctx, ctx.node.input[i], anchor, channels, axes)
        if made is None or tuple(made[1]) != tuple(anchor.stride):
            continue
        found = (i, j, anchor) + tuple(made)
        break
    if found is None or any(sp.corr is None for sp in operands):
        return var, mixture, corr
    i, j, anchor, kern, stride, origin, dilations = found
    sd = [np.sqrt(within_variance(sp, channels)) for sp in operands]
    c_ab = cross_channel.operand_covariance(kern, stride, dilations, origin, anchor.sd, anchor,
                                            sd[j], corr.radius)
    if i == 1:  # Cov(op0(q), op1(q + d)) = C_10[c', c, -d]
        c_ab = np.flip(np.swapaxes(c_ab, 0, 1), axis=tuple(range(2, 2 + axes)))
    sign = -1.0 if op == "Sub" else 1.0
    parts = []
    for sp, s in zip(operands, sd):
        field = (sp.corr.cross.corr if sp.corr.cross is not None
                 else cross_channel.from_diagonal(sp.corr.rho, channels))
        field = cross_channel.cropped(field, corr.radius)
        parts.append(field * (s.reshape((-1, 1) + (1,) * axes) * s.reshape((1, -1) + (1,) * axes)))
    cov = parts[0] + parts[1] + sign * (c_ab + np.flip(np.swapaxes(c_ab, 0, 1),
                                                       axis=tuple(range(2, 2 + axes))))
    total, _ = cross_channel.normalised(cov)
    centre = (np.arange(channels), np.arange(channels), *corr.radius)
    rho = c_ab[centre] / np.where(sd[0] * sd[1] > 0, sd[0] * sd[1], 1.0)  # [C]
    shape = (1, channels) + (1,) * axes
    extra = 2 * sign * rho.reshape(shape) * np.sqrt(cells[0].var) * np.sqrt(cells[1].var)
    var = np.maximum(var + extra, 0.0)
    maps = joint([sp.maps for sp in operands], ctx.out_shape(0)[2:])[0]
    sampled = shared_source.sampled_mixture(ctx, anchor.name, channels, axes, sign,
                                            cells[0].mean + sign * cells[1].mean, var, maps)
    draws, mixture = None, None
    # a ReLU branch of a linear image of a Gaussian A, per side of its kink, where the
    # sampled law does not hold
    if op == "Add" and (sampled is None or not sampled[2].all()):
        weights = class_weights(maps)
        mixture = relu_plus_linear(cells[j], cells[i], (rho * sd[0] * sd[1]).reshape(shape),
                                   len(shape), weights.reshape((1, 1) + weights.shape))
        if mixture is None:
            beta = rho * sd[j] / np.where(sd[i] > 0, sd[i], 1.0)
            mixture = _regressed_mixture(cells[i], cells[j], beta.reshape(shape), len(shape))
    if sampled is not None:  # both operands sparse linear maps of A: their sum's own law
        law, draws, valid = sampled
        mixture = _where_valid(valid, law, mixture, cells[0].mean + sign * cells[1].mean, var)
    return var, mixture, replace(corr, rho=CrossField(total).diagonal(),
                                 cross=CrossField(total, joint=draws))


def _where_valid(valid: np.ndarray, law, other, mean, var):
    """The sampled ``law`` at the classes where it holds (``valid`` ``[R...]``), ``other``
    (the regression's mixture, or the Gaussian of the cell's moments when None) elsewhere;
    the two padded with weightless components to the same count."""
    shape = np.broadcast_shapes(np.shape(mean), np.shape(var), law[0].shape[1:],
                                (1, 1) + valid.shape)
    if other is None:
        other = (np.ones((1,) + shape), np.broadcast_to(mean, shape)[None],
                 np.broadcast_to(var, shape)[None])
    parts = []
    for mix in (law, other):
        k = max(np.shape(x)[0] for x in mix)
        parts.append([np.broadcast_to(x, (k,) + shape) for x in mix])
    k = max(p[0].shape[0] for p in parts)
    padded = []
    for w, m, v in parts:
        pad = ((0, k - w.shape[0]),) + ((0, 0),) * len(shape)
        padded.append((np.pad(w, pad), np.pad(m, pad, mode="edge"), np.pad(v, pad, mode="edge")))
    mask = np.broadcast_to(valid.reshape((1, 1, 1) + valid.shape), (k,) + shape)
    return tuple(np.where(mask, a, b) for a, b in zip(*padded))


def _scaled_cells(x: Moments, g: np.ndarray) -> Moments | None:
    """``g x`` per channel (g > 0) keeping x's law: a Gaussian, a ReLU of one (``g relu(z) =
    relu(g z)``) or a mixture; None for another chain."""
    src = x.source
    if x.mixture is not None and src is None:
        w, m, v = x.mixture
        return Moments(x.mean * g, x.var * g * g, None, (w, m * g, v * g * g))
    if src is None or not src.chain:
        return Moments(x.mean * g, x.var * g * g)
    if len(src.chain) == 1 and src.chain[0].key == ("Relu",):
        return Moments(x.mean * g, x.var * g * g, Source(src.mean * g, src.var * g * g,
                                                         src.chain))
    return None


def _regressed_mixture(a: Moments, b: Moments, beta: np.ndarray, rank: int):
    """a + b with b = beta a + e, e uncorrelated with a (least squares per channel) and taken
    as independent: ``(1 + beta) a + e`` as a Gaussian mixture (``mixture.sum_mixture``),
    ``E e = E b - beta E a``, ``Var e = Var b - beta^2 Var a``; None where 1 + beta <= 0 or
    a's law is not one of those."""
    g = 1.0 + beta
    if np.any(g <= 0):
        return None
    scaled = _scaled_cells(a, g)
    if scaled is None:
        return None
    rest = Moments(b.mean - beta * a.mean, np.maximum(b.var - beta * beta * a.var, 0.0))
    return sum_mixture(scaled, rest, rank)


__all__ = ["add", "affine", "conv", "elementwise", "residual_sum"]
