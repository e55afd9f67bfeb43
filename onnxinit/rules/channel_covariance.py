"""The covariance of a tensor's channels at one position, from a 1x1 Conv that mixes them to
the next 1x1 Conv that reads them.

The Conv rule takes its input's channels as independent: ``Var y_j = sum_m W_jm^2 nu_m``. The
cross terms ``sum_{m != m'} W_jm W_jm' Cov(x_m, x_m')`` have mean zero over random weights, but
not for the weights at hand when the input is itself a linear map of few channels: a 1x1 Conv
``x = V u`` of ``C`` independent channels has ``Cov x = V diag(nu_u) V^T``, whose correlations
are of order ``1/sqrt(C)`` (0.3 rms for MobileNetV3-small's 16-channel projection), and a
1x1 Conv reading ``x`` directly (a linear bottleneck's projection, then the next block's
expansion: no activation between them) sums them. Measured there (64x64, batch 64), the
expansion's variance is 1.07-1.135x the independent sum on three random initializations.

Carried, per tensor, as the within-position covariance ``S`` ``[C, C]`` (the spread of the
position means excluded: the position classes hold that exactly):

- 1x1 Conv, one group: ``S_y = W S_x W^T``, ``S_x = diag(nu_x)`` where x has no field;
- BatchNormalization, and Mul/Add/Sub/Div by a constant: a per-channel affine map
  ``y_c = a_c x_c + b_c``, ``S_y = D S_x D``, ``D = diag(a)`` (``|a_c| = sqrt(nu_y / nu_x)``,
  batch statistics included; its sign the scale's);
- Add/Sub of two signals: ``S_a + S_b`` (``- S_b`` sign-free: covariances add), the operands
  taken as independent (a residual sum's skip and branch);
- a kxk Conv (any groups): the same-tap sum ``sum_t W_t S_x W_t^T`` (``W_t`` block-diagonal
  over the groups: a depthwise Conv keeps the correlation of the channels it reads; input
  positions taken as independent), as a correlation scaled to y's within-position variance;
- an element-wise function f (ReLU, Clip, Sigmoid, ...): Mehler's formula on the correlation,
  ``Cov(f(x_i), f(x_j)) = a_1^i a_1^j rho_ij + a_2^i a_2^j rho_ij^2`` with each channel's
  Hermite amplitudes for x taken as Gaussian with its channel mean and within-position
  variance (Gauss-Hermite nodes; Mehler's orders above 2 left out: channels correlate weakly,
  ``|rho| ~ 1/sqrt(C)``, and a ReLU's third amplitude is 0 at mean 0);
- Mul by a signal broadcast over the positions (a squeeze-excite gate ``[N, C, 1, 1]``, taken
  as independent of x and of the other channels' gates): ``S_y[i, j] = E g_i E g_j S_x[i, j]``
  off the diagonal;
- Pad of the positions: the correlation, rescaled to y's within-position variances;
- Identity, Reshape-free layout ops and everything else: none (channels independent).

BatchNormalization's running variance (rules/running_statistics.py) is the spread of the
per-channel variances, so it reads them through these cross terms: on HF RegNet (32x32,
batch 8) the 1x1 Convs' per-channel variances correlate 0.77-0.96 with the measured ones
without the input's channel covariance and 1.000 with it.

A 1x1 Conv reading a tensor with a field adds the cross terms per output channel,
``Var y_j = w_j^T S_x w_j``, scaling each position class's variance by
``w_j^T S_x w_j / sum_m W_jm^2 S_x,mm``. Not modelled: the cross-channel covariance at other
offsets (a kxk Conv's cross terms between taps are neither carried nor added to its output's
variance), and a gate's own covariance across channels.
"""

from __future__ import annotations

import numpy as np

from ..moments import Moments
from ..spatial import positions, within_variance
from .context import RuleContext, RuleError
from .elementwise import UNARY, elementwise
from .hermite import coefficients
from .on_demand import OnDemandField

MAX_CHANNELS = 1024  # a field is [C, C]: beyond, the cross terms are small (1/sqrt(C)) anyway
_FIELD = OnDemandField()
_AFFINE = ("Mul", "Add", "Sub", "Div")


def within(m: Moments, shape) -> np.ndarray:
    """Per-channel variance at one position (``[C]``), the position means' spread excluded."""
    c = shape[1]
    sp = positions(m, shape) if len(shape) >= 3 else None
    if sp is not None:
        return within_variance(sp, c)
    return np.broadcast_to(m.values_along(1, c)[1], (c,)).copy()


def _pointwise(ctx: RuleContext, node) -> bool:
    """A Conv with a 1x1 kernel, one group, no padding, unit strides and dilations... that
    mixes channels only (strides do not matter: each output reads one position)."""
    if node.op_type != "Conv":
        return False
    w = ctx.graph.value(node.input[1]) if len(node.input) > 1 else None
    if w is None or np.ndim(w) < 3 or any(k != 1 for k in np.shape(w)[2:]):
        return False
    attrs = {a.name: a for a in node.attribute}
    if "group" in attrs and attrs["group"].i != 1:
        return False
    pads = list(attrs["pads"].ints) if "pads" in attrs else []
    return not any(pads)


def _signals(ctx: RuleContext, node) -> list[str]:
    graph = ctx.graph
    return [n for n in node.input if n and not graph.is_constant(n)]


def _deps(ctx: RuleContext, tensor: str) -> list[str]:
    node_id = ctx.graph.producer.get(tensor)
    if node_id is None:
        return []
    node = ctx.graph.node(node_id)
    signals = [n for n in _signals(ctx, node) if n in ctx.known]
    if _pointwise(ctx, node) or node.op_type in ("BatchNormalization", "Conv", "Pad"):
        return signals[:1]
    if node.op_type in _AFFINE and len(signals) <= 2:
        return signals
    if len(signals) == 1 and node.op_type in UNARY:  # an element-wise function (_compute)
        return signals
    return []


def covariance(ctx: RuleContext, tensor: str) -> np.ndarray | None:
    """``S`` ``[C, C]`` of ``tensor`` (module docstring), None where its channels count as
    independent (or outside propagation)."""
    known = ctx.known
    shape = ctx.graph.shape(tensor)
    if known is None or tensor not in known or not shape or len(shape) < 2:
        return None
    if shape[1] > MAX_CHANNELS:
        return None
    return _FIELD.value(ctx, tensor, lambda name: _deps(ctx, name),
                        lambda name, field_of: _compute(ctx, name, field_of))


def _compute(ctx: RuleContext, tensor: str, field_of) -> np.ndarray | None:
    graph, known = ctx.graph, ctx.known
    node_id = graph.producer.get(tensor)
    shape = graph.shape(tensor)
    if node_id is None or not shape or len(shape) < 2 or shape[1] > MAX_CHANNELS:
        return None
    node = graph.node(node_id)
    signals = [n for n in _signals(ctx, node) if n in known]
    try:
        if _pointwise(ctx, node) and signals:
            x = signals[0]
            w = np.asarray(graph.value(node.input[1]), dtype=np.float64)
            w = w.reshape(w.shape[0], -1)
            s_x = _field_or_diagonal(ctx, x, field_of)
            if s_x is None or s_x.shape[0] != w.shape[1]:
                return None
            return w @ s_x @ w.T
        if node.op_type == "BatchNormalization" or (node.op_type in _AFFINE
                                                     and len(signals) == 1):
            s_x = field_of(signals[0]) if signals else None
            if s_x is None:
                return None
            return _affine(ctx, node, signals[0], tensor, s_x)
        if node.op_type in ("Add", "Sub") and len(signals) == 2:
            parts = [field_of(n) for n in signals]
            if all(p is None for p in parts):
                return None
            parts = [p if p is not None else _field_or_diagonal(ctx, n, lambda _: None)
                     for p, n in zip(parts, signals)]
            if any(p is None for p in parts) or parts[0].shape != parts[1].shape:
                return None
            if parts[0].shape[0] != shape[1]:
                return None
            return parts[0] + parts[1]
        if node.op_type == "Mul" and len(signals) == 2:
            return _gated(ctx, signals, tensor, field_of)
        if node.op_type == "Pad" and signals:
            return _padded(ctx, signals[0], tensor, field_of)
        if node.op_type == "Conv" and signals:
            return _dense_conv(ctx, node, signals[0], tensor, field_of)
        if len(signals) == 1 and node.op_type in UNARY:
            f = elementwise(node, ctx)
            if f is not None:
                return _through(ctx, f.fn, signals[0], tensor, field_of)
    except (RuleError, ValueError, TypeError):
        return None
    return None


def _field_or_diagonal(ctx: RuleContext, name: str, field_of) -> np.ndarray | None:
    s = field_of(name)
    if s is not None:
        return s
    shape = ctx.graph.shape(name)
    if not shape or len(shape) < 2:
        return None
    return np.diag(within(ctx.known[name], shape))


def _rescaled(s: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """``s`` as a correlation, scaled to the variances ``nu`` on its diagonal."""
    d = np.sqrt(np.maximum(np.diag(s), 0.0))
    scale = np.where(d > 0, np.sqrt(np.maximum(nu, 0.0)) / np.where(d > 0, d, 1.0), 0.0)
    out = s * scale[:, None]
    out *= scale[None, :]
    np.fill_diagonal(out, np.where(d > 0, nu, 0.0))
    return out


def _dense_conv(ctx: RuleContext, node, x: str, y: str, field_of) -> np.ndarray | None:
    """``sum_t W_t S_x W_t^T`` per group, rescaled to y's within-position variances."""
    graph = ctx.graph
    w = graph.value(node.input[1]) if len(node.input) > 1 else None
    shape_x, shape_y = graph.shape(x), graph.shape(y)
    if w is None or np.ndim(w) < 3 or not shape_x or not shape_y:
        return None
    w = np.asarray(w, dtype=np.float64)
    c_out, c_in_group, taps = w.shape[0], w.shape[1], int(np.prod(w.shape[2:]))
    groups = shape_x[1] // c_in_group
    if groups < 1 or groups * c_in_group != shape_x[1] or c_out % groups:
        return None
    s_x = _field_or_diagonal(ctx, x, field_of)
    if s_x is None or s_x.shape[0] != shape_x[1]:
        return None
    nu_y = within(ctx.known[y], shape_y)
    per = c_out // groups
    if c_in_group == 1:  # depthwise (a channel multiplier per): one input channel per output
        k = w.reshape(c_out, taps)
        if per == 1:
            s_y = s_x * (k @ k.T)
        else:
            source = np.arange(c_out) // per
            s_y = s_x[source[:, None], source[None, :]] * (k @ k.T)
    else:  # [G, per, in, taps]: the groups read correlated inputs too
        w4 = w.reshape(groups, per, c_in_group, taps)
        left = w4.transpose(0, 1, 3, 2).reshape(groups, per * taps, c_in_group)
        mixed = left @ s_x.reshape(groups, c_in_group, -1)  # [g, per * taps, G * in]
        mixed = mixed.reshape(groups, per, taps, groups, c_in_group).transpose(3, 0, 1, 2, 4)
        right = w4.transpose(0, 3, 2, 1).reshape(groups, taps * c_in_group, per)
        out = mixed.reshape(groups, c_out, taps * c_in_group) @ right  # [h, (g, p), q]
        s_y = out.transpose(1, 0, 2).reshape(c_out, c_out)
    return _rescaled(s_y, nu_y)


def _padded(ctx: RuleContext, x: str, y: str, field_of) -> np.ndarray | None:
    """A Pad of the positions (the channels kept): the channels' correlation, rescaled to
    y's within-position variances (a padded cell is constant, or a copy of an inside one)."""
    s_x = field_of(x)
    shape_x, shape_y = ctx.graph.shape(x), ctx.graph.shape(y)
    if (s_x is None or not shape_x or not shape_y or len(shape_x) != len(shape_y)
            or shape_x[:2] != shape_y[:2] or s_x.shape[0] != shape_y[1]):
        return None
    if shape_x == shape_y:  # nothing padded
        return s_x
    return _rescaled(s_x, within(ctx.known[y], shape_y))


def _through(ctx: RuleContext, fn, x: str, y: str, field_of) -> np.ndarray | None:
    """Mehler's formula per pair of channels (module docstring)."""
    s_x = field_of(x)
    shape = ctx.graph.shape(y)
    if s_x is None or ctx.graph.shape(x) != shape or s_x.shape[0] != shape[1]:
        return None
    c = shape[1]
    nu_x = np.diag(s_x)
    mean = ctx.known[x].values_along(1, c)[0]
    a, _ = coefficients(fn, mean, nu_x)  # [ORDER + 1, C]
    sd = np.sqrt(np.maximum(nu_x, 0.0))
    inv = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0), 0.0)
    first, second = a[1] * inv, a[2] * inv**2  # rho = S_x / (sd sd^T)
    s_y = s_x * first[:, None]
    s_y *= first[None, :]  # a_1 a_1 rho
    square = s_x * s_x
    square *= second[:, None]
    square *= second[None, :]
    s_y += square  # + a_2 a_2 rho^2
    np.fill_diagonal(s_y, within(ctx.known[y], shape))
    return s_y


def _gated(ctx: RuleContext, signals: list[str], y: str, field_of) -> np.ndarray | None:
    """``x * g`` with g broadcast over the positions: ``E g_i E g_j S_x[i, j]`` off the
    diagonal (module docstring)."""
    graph = ctx.graph
    shape = graph.shape(y)
    full = [n for n in signals if graph.shape(n) == shape]
    gates = [n for n in signals if graph.shape(n) != shape]
    if len(full) != 1 or len(gates) != 1:
        return None
    gate_shape = graph.shape(gates[0])
    if (not gate_shape or len(gate_shape) != len(shape) or gate_shape[1] != shape[1]
            or any(k != 1 for k in gate_shape[2:])):
        return None
    s_x = field_of(full[0])
    if s_x is None or s_x.shape[0] != shape[1]:
        return None
    g = ctx.known[gates[0]].values_along(1, shape[1])[0]
    s_y = s_x * np.outer(g, g)
    np.fill_diagonal(s_y, within(ctx.known[y], shape))
    return s_y


def _affine(ctx: RuleContext, node, x: str, y: str, s_x: np.ndarray) -> np.ndarray | None:
    graph, known = ctx.graph, ctx.known
    shape = graph.shape(y)
    if graph.shape(x) != shape or s_x.shape[0] != shape[1]:
        return None
    nu_x, nu_y = within(known[x], shape), within(known[y], shape)
    a = np.sqrt(np.where(nu_x > 0, nu_y / np.maximum(nu_x, 1e-300), 0.0))
    const = None
    if node.op_type == "BatchNormalization":
        const = graph.value(node.input[1]) if len(node.input) > 1 else None
    elif node.op_type in ("Mul", "Div"):
        other = next((n for n in node.input if n and graph.is_constant(n)), None)
        const = graph.value(other) if other is not None else None
    if const is not None:
        const = np.asarray(const, dtype=np.float64)
        if const.size == shape[1] or const.size == 1:
            a = a * np.sign(np.broadcast_to(const.reshape(-1), (shape[1],)))
        else:
            return None
    return s_x * np.outer(a, a)


def cross_term_factor(ctx: RuleContext, w: np.ndarray) -> np.ndarray | None:
    """Per output channel of the 1x1 Conv of ``ctx`` (weight ``w`` ``[C_out, C_in, 1...]``),
    ``w_j^T S w_j / sum_m W_jm^2 S_mm`` for its input's field S; None without one."""
    if not _pointwise(ctx, ctx.node):
        return None
    s = covariance(ctx, ctx.node.input[0])
    if s is None:
        return None
    w = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
    if s.shape[0] != w.shape[1]:
        return None
    diag = (w * w) @ np.diag(s)
    full = ((w @ s) * w).sum(axis=1)
    return np.where(diag > 0, np.maximum(full, 0.0) / np.maximum(diag, 1e-300), 1.0)
