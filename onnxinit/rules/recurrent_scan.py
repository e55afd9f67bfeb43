"""The scan behind the LSTM, GRU and RNN rules (recurrent.py): the op's attributes, weights,
initial states and sequence lengths read, each direction's moment recursion run
(recurrence.py), and the outputs Y (with its correlation across steps as a token field), Y_h,
Y_c assembled.

The input's per-step, per-feature moments come from X's statistics (pooled over the batch);
its correlation across steps from X's token field along the time axis, independent steps
otherwise; its features' covariance (X's channel field, a stacked layer reading the previous
layer's units, which share each sample's input: recurrent_units.py) scales each gate's
drive variance, ``w_j^T S_x w_j`` instead of ``sum_k W_jk^2 Var x_k``.
"""

from __future__ import annotations

import weakref

import numpy as np
from .. import special

from ..moments import Moments
from . import recurrence
from .context import RuleContext, RuleError, signal
from .layout import drop_constant_axes, full_grid
from .masks import sequence_lengths
from .covariance_layout import Field
from .recurrence import Drive, Gate
from .token_field import attach, token_axes

# per graph, per node: (X's moments, X's field, the record) of the rule's last run (scanned)
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MAX_LENGTHS = 8  # distinct sequence lengths scanned separately
_MAX_STEPS = 512

# ONNX's recurrent activations: (function of (alpha, beta), alpha default, beta default, smooth)
_ACTIVATIONS = {
    "relu": (lambda a, b: lambda x: np.maximum(x, 0.0), None, None, False),
    "tanh": (lambda a, b: np.tanh, None, None, True),
    "sigmoid": (lambda a, b: special.expit, None, None, True),
    "affine": (lambda a, b: lambda x: a * x + b, 1.0, 0.0, True),
    "leakyrelu": (lambda a, b: lambda x: np.where(x >= 0, x, a * x), 0.01, None, False),
    "thresholdedrelu": (lambda a, b: lambda x: np.where(x >= a, x, 0.0), 1.0, None, False),
    "scaledtanh": (lambda a, b: lambda x: a * np.tanh(b * x), 1.0, 1.0, True),
    "hardsigmoid": (lambda a, b: lambda x: np.clip(a * x + b, 0.0, 1.0), 0.2, 0.5, False),
    "elu": (lambda a, b: lambda x: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0.0))), 1.0,
            None, False),
    "softsign": (lambda a, b: lambda x: x / (1.0 + np.abs(x)), None, None, True),
    "softplus": (lambda a, b: lambda x: np.logaddexp(0.0, x), None, None, True),
}
_DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _gates(ctx: RuleContext, directions: int) -> list[list[Gate]]:
    """Per direction, the activation functions (clipped inputs when ``clip`` is set)."""
    op = ctx.node.op_type
    names = list(ctx.attr("activations", []) or [])
    names = [n.decode() if isinstance(n, bytes) else n for n in names]
    per = len(_DEFAULTS[op])
    if not names:
        names = list(_DEFAULTS[op]) * directions
    elif len(names) == per and directions == 2:
        names = names * 2
    alphas = list(ctx.attr("activation_alpha", []) or [])
    betas = list(ctx.attr("activation_beta", []) or [])
    clip = ctx.attr("clip")
    out = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise RuleError(f"activation {name}")
        make, alpha, beta, smooth = _ACTIVATIONS[key]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        fn = make(alpha, beta)
        if clip is not None:
            fn = (lambda f, c: lambda x: f(np.clip(x, -c, c)))(fn, float(clip))
            smooth = False
        out.append(Gate(fn, smooth))
    return [out[d * per:(d + 1) * per] for d in range(directions)]


def _weights(ctx: RuleContext, index: int, name: str) -> np.ndarray:
    value = ctx.const(index)
    if value is None:
        raise RuleError(f"{name} is not constant")
    return np.asarray(value, dtype=np.float64)


def _input_steps(x: Moments, shape, time_axis: int):
    """(mean [T, I], var [T, I], correlation across steps [T, T]) of X, pooled over the batch."""
    rank = len(shape)
    steps = shape[time_axis]
    mean, var = (a.reshape((1,) * (rank - a.ndim) + a.shape)
                 for a in np.broadcast_arrays(x.mean, x.var))
    batch = 1 - time_axis
    m = mean.mean(axis=batch)
    v = var.mean(axis=batch) + ((mean - np.expand_dims(m, batch)) ** 2).mean(axis=batch)
    m = np.broadcast_to(m, (steps, shape[2]))
    v = np.broadcast_to(v, (steps, shape[2]))
    t = x.tokens
    if t is not None and token_axes(t, rank) == [time_axis] and t.n == steps:
        d = np.sqrt(np.maximum(np.diag(t.cov), 1e-300))
        v = v * np.diag(t.cov)[:, None]  # the per-step profile lives in the field
        return np.array(m), np.array(v), t.cov / np.outer(d, d)
    return np.array(m), np.array(v), np.eye(steps)


def feature_correlation(x_field: Field | None, features: int) -> np.ndarray | None:
    """The correlation ``[I, I]`` of X's features from its field over the last axis (X is
    ``[T, N, I]`` or ``[N, T, I]``), None without one."""
    if (x_field is None or x_field.head_axis is not None or x_field.axis != 2
            or x_field.cov.shape != (features, features)):
        return None
    sd = np.sqrt(np.maximum(np.diag(x_field.cov), 1e-300))
    return x_field.cov / np.outer(sd, sd)


def _drive(mean, var, corr, W, bias, gates: int = 1, corr_x=None) -> Drive:
    """W x_t + bias over the steps given, with the input's correlation across steps and, for
    ``gates`` > 1, the covariance between the gates of one unit, ``sum_k W_ak W_bk Var[x_k]``.
    With the features' correlation ``corr_x``: ``W S_x W^T`` (S_x at the pooled variances; its
    ratio to the independent sum scales each row's variance at every step)."""
    dm = mean @ W.T + bias
    dv = var @ (W**2).T
    pooled = var.mean(axis=0)
    if corr_x is not None:
        sd_x = np.sqrt(pooled)
        ws = W @ (corr_x * np.outer(sd_x, sd_x))
        independent = (W**2) @ pooled
        dv = dv * np.where(independent > 0, np.maximum(np.einsum("jk,jk->j", ws, W), 0.0)
                           / np.where(independent > 0, independent, 1.0), 1.0)
    sd = np.sqrt(dv)
    cross = None
    if gates > 1:
        wg = W.reshape(gates, W.shape[0] // gates, -1)
        cross = np.einsum("ajk,bjk,tk->tabj", wg, wg, var)
        if corr_x is not None:  # the step's share of the pooled cross terms
            extra = (np.einsum("ajl,bjl->abj", ws.reshape(wg.shape), wg)
                     - np.einsum("ajk,bjk,k->abj", wg, wg, pooled))
            share = var.mean(axis=1) / max(float(pooled.mean()), 1e-300)
            cross = cross + share[:, None, None, None] * extra[None]
    return Drive(dm, dv, corr[:, :, None] * sd[:, None, :] * sd[None, :, :], cross)


def _initial(ctx: RuleContext, inputs, index: int, directions: int, units: int, layout: int):
    """Per direction (mean [H], var [H]) of an initial state input (zeros when absent)."""
    zeros = [(np.zeros(units), np.zeros(units))] * directions
    if not ctx.has_input(index):
        return zeros
    m = inputs[index]
    if m is None:
        value = ctx.const(index)
        if value is None:
            raise RuleError("the initial state is neither a signal nor constant")
        m = Moments(np.asarray(value, dtype=np.float64), np.zeros(np.shape(value)))
    shape = ctx.in_shape(index)
    m = m.expand_rank(3)
    mean, var = (np.broadcast_to(a, shape).astype(np.float64) for a in np.broadcast_arrays(m.mean, m.var))
    d_axis, b_axis = (0, 1) if layout == 0 else (1, 0)
    out = []
    for d in range(directions):
        md, vd = np.take(mean, d, axis=d_axis), np.take(var, d, axis=d_axis)
        mu = md.mean(axis=0)
        out.append((mu, vd.mean(axis=0) + ((md - mu) ** 2).mean(axis=0)))
    return out


def _lengths(ctx: RuleContext, steps: int, batch: int) -> list[tuple[int, float]]:
    """Distinct sequence lengths with their share of the batch (all ``steps`` when absent)."""
    if not ctx.has_input(4):
        return [(steps, 1.0)]
    value = sequence_lengths(ctx, 4)
    if value is None:
        raise RuleError("sequence_lens is not known")
    lengths, counts = np.unique(np.clip(value, 0, steps), return_counts=True)
    if lengths.size > _MAX_LENGTHS:
        raise RuleError("too many distinct sequence lengths")
    return [(int(n), c / counts.sum()) for n, c in zip(lengths, counts)]


def _scan(op: str, ctx: RuleContext, drive: Drive, d: int, gates, h0, c0, R, B):
    units = R.shape[-1]
    g = _GATES[op]
    if op == "LSTM":
        peep = _weights(ctx, 7, "P")[d].reshape(3, units) if ctx.has_input(7) else None
        return recurrence.lstm(drive, R[d], peep, c0, h0, tuple(gates),
                               bool(ctx.attr("input_forget", 0)))
    if op == "GRU":
        rb = B[d, g * units + 2 * units:] if B is not None else np.zeros(units)
        return recurrence.gru(drive, R[d], rb, h0, tuple(gates),
                              bool(ctx.attr("linear_before_reset", 0)))
    return recurrence.rnn(drive, R[d], h0, gates[0])


def run(op: str, inputs, ctx: RuleContext, x_field: Field | None = None):
    """The op's outputs; ``x_field`` X's features' covariance (its channel field over the last
    axis), if any. What :mod:`.recurrent_units` reads is kept for :func:`scanned`: the
    weights, the input's per-step variance and correlation across steps, each direction's
    gate slopes and state variances per step (``scans``: (reverse, dict), scan order) and the
    distinct lengths."""
    keep: dict = {}
    _KEPT.setdefault(ctx.graph, {})[ctx.node_id] = (inputs[0] if inputs else None, x_field,
                                                    keep)
    x = signal(inputs, 0)
    layout = int(ctx.attr("layout", 0))
    shape = ctx.in_shape(0)
    time_axis = 0 if layout == 0 else 1
    steps, batch = shape[time_axis], shape[1 - time_axis]
    if steps > _MAX_STEPS:
        raise RuleError(f"more than {_MAX_STEPS} steps")
    W, R = _weights(ctx, 1, "W"), _weights(ctx, 2, "R")
    B = _weights(ctx, 3, "B") if ctx.has_input(3) else None
    directions, units = W.shape[0], R.shape[-1]
    g = _GATES[op]
    reverse = [False, True] if directions == 2 else [ctx.attr("direction", "forward") == "reverse"]
    gates = _gates(ctx, directions)
    h0s = _initial(ctx, inputs, 5, directions, units, layout)
    c0s = _initial(ctx, inputs, 6, directions, units, layout) if op == "LSTM" else [None] * 2
    mean, var, corr = _input_steps(x, shape, time_axis)
    corr_x = feature_correlation(x_field, shape[2])
    lengths = _lengths(ctx, steps, batch)
    y_mean = np.zeros((steps, directions, units))
    y_second = np.zeros((steps, steps, directions, units))
    last = {"h": np.zeros((2, directions, units)), "c": np.zeros((2, directions, units))}
    for d in range(directions):
        bias = np.zeros(g * units) if B is None else B[d, : g * units] + (
            B[d, g * units:] if op != "GRU" else np.concatenate(
                [B[d, g * units: g * units + 2 * units], np.zeros(units)]))
        for length, share in lengths:
            if length == 0:
                continue
            order = np.arange(length)[::-1] if reverse[d] else np.arange(length)
            drive = _drive(mean[order], var[order], corr[np.ix_(order, order)], W[d], bias,
                           g if op == "LSTM" else 1, corr_x)
            scan = _scan(op, ctx, drive, d, gates[d], h0s[d], c0s[d], R, B)
            keep.setdefault("scans", []).append((reverse[d], _record(scan)))
            y_mean[order, d] += share * scan.h_mean
            y_second[np.ix_(order, order, [d])] += share * scan.h_second[:, :, None, :]
            last["h"][:, d] += share * np.stack([scan.h_mean[-1], scan.h_second[-1, -1]])
            if scan.c_mean is not None:
                last["c"][:, d] += share * np.stack([scan.c_mean[-1], scan.c_second[-1, -1]])
    keep.update(W=W, R=R, B=B, var=var, corr=corr, lengths=lengths, layout=layout,
                units=units, directions=directions, h0=h0s, c0=c0s,
                corr_x=np.eye(shape[2]) if corr_x is None else corr_x)
    return _outputs(ctx, layout, y_mean, y_second, last)


def scanned(inputs, ctx: RuleContext, x_field: Field | None = None) -> dict:
    """:func:`run`'s record for the recurrent node of ``ctx``: the rule's own run when it
    read the same X and field (their moments the same objects), else a new run."""
    hit = _KEPT.get(ctx.graph, {}).get(ctx.node_id)
    if hit is None or hit[0] is not inputs[0] or hit[1] is not x_field or "var" not in hit[2]:
        run(ctx.node.op_type, inputs, ctx, x_field)
        hit = _KEPT[ctx.graph][ctx.node_id]
    return hit[2]


def _record(scan) -> dict:
    """A scan's gate slopes and per-step state variances (not its [T, T, H] products)."""
    out = dict(scan.slopes or {})
    out["var_h"] = np.einsum("tth->th", scan.h_second) - scan.h_mean**2
    if scan.c_second is not None:
        out["var_c"] = np.einsum("tth->th", scan.c_second) - scan.c_mean**2
    return out


def _outputs(ctx: RuleContext, layout: int, y_mean, y_second, last):
    """Y (with its correlation across steps as a token field), Y_h, Y_c."""
    steps = y_mean.shape[0]
    y_var = np.maximum(np.einsum("ttdh->tdh", y_second) - y_mean**2, 0.0)
    cov = (y_second - y_mean[:, None] * y_mean[None]).mean(axis=(2, 3))
    # the field is the correlation across steps: Y keeps its variance per step and direction
    # (token_field.attach; one profile for all features would mis-state a bidirectional
    # layer's steps, the reverse direction's last index being its first step)
    sd = np.sqrt(np.maximum(np.diag(cov), 1e-300))
    cov = cov / np.outer(sd, sd)
    outs = []
    names = list(ctx.node.output) + [""] * (3 - len(ctx.node.output))
    if names[0]:
        grid = (steps, y_mean.shape[1], 1, y_mean.shape[2])
        m = Moments(y_mean.reshape(grid), y_var.reshape(grid))
        time_axis = 0
        if layout == 1:  # [B, T, D, H]
            m = Moments(y_mean[None], y_var[None])
            time_axis = 1
        outs.append(attach(m, ctx.out_shape(0), [time_axis], cov))
    else:
        outs.append(None)
    for key, name in (("h", names[1]), ("c", names[2])):
        if not name:
            outs.append(None)
            continue
        mean, second = last[key]
        var = np.maximum(second - mean**2, 0.0)
        mean, var = ((a[:, None, :] if layout == 0 else a[None]) for a in (mean, var))
        outs.append(Moments(mean, var))
    return outs[: len(ctx.node.output)]
