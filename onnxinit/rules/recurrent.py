"""LSTM, GRU and RNN: the ONNX ops around the moment recursions of recurrence.py.

Every output (Y, Y_h and Y_c), direction (forward, reverse, bidirectional), layout (0: time
first, 1: batch first), initial state (absent: zeros; a constant or a signal: its moments per
direction and unit), ``sequence_lens`` (constant or computed from an attention-mask-like input:
each distinct length is scanned separately and the outputs mix over the batch, Y being 0 past a
sequence's end), ``activations`` with ``activation_alpha``/``activation_beta``, ``clip`` (the
gate pre-activations clipped before their function), ``input_forget`` and peepholes (LSTM) and
``linear_before_reset`` (GRU).

The input's per-step, per-feature moments come from X's statistics (pooled over the batch);
its correlation across steps from X's token field along the time axis (``Moments.tokens``: a
stacked layer reads the previous layer's output, which is strongly correlated over time),
independent steps otherwise. Y carries its own correlation across steps as a token field, for
the next layer (and for anything that pools over time).
"""

from __future__ import annotations

import numpy as np

from .channel_covariance import covariance
from .context import RuleContext, RuleError, signal
from .layout import drop_constant_axes, full_grid
from .masks import sequence_lengths
from .recurrent_scan import run
from .registry import rule


@rule("ReverseSequence")
def reverse_sequence(inputs, ctx: RuleContext):
    """``y[b, t] = x[b, len_b - 1 - t]`` for ``t < len_b``, else ``x[b, t]`` (along
    ``time_axis``, per index b of ``batch_axis``; tf2onnx writes Keras' ``go_backwards`` so):
    the per-element statistics gathered the same way."""
    x = signal(inputs, 0)
    if x.is_scalar:
        return [x]
    shape = ctx.in_shape(0)
    rank = len(shape)
    time, batch = ctx.attr("time_axis", 0) % rank, ctx.attr("batch_axis", 1) % rank
    lengths = sequence_lengths(ctx, 1)
    if lengths is None:
        raise RuleError("sequence_lens is not known")
    mean, var = full_grid(x, rank)
    if mean.shape[time] == 1 and (mean.shape[batch] == 1 or np.all(lengths >= shape[time])):
        return [x]  # the same statistics at every step
    steps = np.arange(shape[time])
    lengths = np.broadcast_to(np.clip(lengths, 0, shape[time]), (shape[batch],))
    index = np.where(steps[None] < lengths[:, None], lengths[:, None] - 1 - steps[None], steps)
    if np.all(index == index[:1]):  # one reversal for the whole batch
        out = [np.take(np.broadcast_to(a, a.shape[:time] + (shape[time],) + a.shape[time + 1:]),
                       index[0], axis=time) for a in (mean, var)]
        return [drop_constant_axes(*out)]
    full = tuple(n if a in (time, batch) else mean.shape[a] for a, n in enumerate(shape))
    layout = [1] * rank
    layout[batch], layout[time] = shape[batch], shape[time]
    index = (index if batch < time else index.T).reshape(layout)
    out = [np.take_along_axis(np.broadcast_to(a, full), np.broadcast_to(index, full), axis=time)
           for a in (mean, var)]
    return [drop_constant_axes(*out)]


@rule("LSTM")
def lstm(inputs, ctx: RuleContext):
    """LSTM (gates i, o, f, c): per unit and step, E[z] = W E[x_t] + R E[h_{t-1}] + b,
    Var[z] = W^2 Var[x_t] + R^2 Var[h_{t-1}], Cov across steps likewise; gates integrated over
    Gaussian pre-activations (Mehler across steps); c_t = f c_{t-1} + i g and h_t = o h(c_t)
    with E[c_t^2] = E[f^2] E[c_{t-1}^2] + 2 E[f] E[c_{t-1} i_t g_t] + E[i^2] E[g^2]
    (recurrence.py)."""
    return _run("LSTM", inputs, ctx)


@rule("GRU")
def gru(inputs, ctx: RuleContext):
    """GRU (gates z, r, h): H_t = (1 - z) n + z H_{t-1}, n = g(W x + R (r H_{t-1}) + b) (or
    r (R H_{t-1} + Rb) with linear_before_reset); E[H_t^2] = E[(1-z)^2] E[n^2] +
    2 E[(1-z) z] E[n_t H_{t-1}] + E[z^2] E[H_{t-1}^2], Mehler across steps (recurrence.py)."""
    return _run("GRU", inputs, ctx)


@rule("RNN")
def rnn(inputs, ctx: RuleContext):
    """RNN: h_t = f(W x_t + R h_{t-1} + b), E and Var per unit and step by quadrature,
    Cov across steps by Mehler's formula (recurrence.py)."""
    return _run("RNN", inputs, ctx)


def _run(op: str, inputs, ctx: RuleContext):
    """The scan (recurrent_scan.py), with X's features' covariance when it has one."""
    return run(op, inputs, ctx, covariance(ctx, ctx.node.input[0]))


__all__ = ["gru", "lstm", "reverse_sequence", "rnn"]
