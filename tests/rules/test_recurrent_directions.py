"""Stacked recurrent layers as PyTorch exports a classifier on the last step (``Y`` [T, D, N, H]
-> Transpose -> Reshape [T, N, D*H] -> the next layer ... -> Gather of the last step ->
MatMul), against onnxruntime on Gaussian inputs (the batch axis holds the samples).

The per-step variance differs between the directions (each starts from a zero state: the
reverse direction's last index is its first step), so the last step's forward and reverse
halves have different variances: before, one per-step profile was shared by both directions'
features and the last step of a bidirectional GRU read 1.44x of the measured (full size: 2
layers, hidden 128, 32 steps), its reverse half 2.7x."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.oracle import assert_moments_close, monte_carlo, predict
from onnxinit.moments import Moments

# a wide head (C) averages out the covariance between the units of one sample (not modelled:
# at 10 outputs a bidirectional RNN's logits read 0.88-1.15x of the measured for either code)
T, N, I, H, C = 12, 2000, 8, 16, 64
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _stack(op: str, direction: str, layers: int = 2, batch_first: bool = False,
           seed: int = 0, sliced: bool = False, norm: bool = False, pooled: bool = False,
           **attrs) -> onnx.ModelProto:
    """``layers`` recurrent layers (PyTorch's default initialization, uniform +-1/sqrt(H)) and
    a linear head on the last step (``batch_first``: the sequence transposed to [N, T, D*H]
    before the Gather, as torch writes ``out[:, -1]``; ``sliced``: a Slice ``[-1:]`` of it, as
    tf2onnx writes Keras' ``return_sequences=False``)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def uniform(*shape):
        return (rng.uniform(-1, 1, shape) / np.sqrt(H)).astype(np.float32)

    x, features = "x", I
    for k in range(layers):
        w = const(f"w{k}", uniform(dirs, g * H, features))
        r = const(f"r{k}", uniform(dirs, g * H, H))
        b = const(f"b{k}", uniform(dirs, 2 * g * H))
        nodes.append(helper.make_node(op, [x, w, r, b], [f"y{k}"], hidden_size=H,
                                      direction=direction, **attrs))
        nodes.append(helper.make_node("Transpose", [f"y{k}"], [f"t{k}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"t{k}", const(f"s{k}", [T, N, dirs * H])],
                                      [f"seq{k}"]))
        x, features = f"seq{k}", dirs * H
    axis = 0
    if norm:  # a LayerNorm over each step's features: every step scaled to the same variance
        nodes.append(helper.make_node("LayerNormalization", [x, const("gamma", np.ones(
            features, np.float32)), const("beta", np.zeros(features, np.float32))], ["ln"],
            axis=-1))
        x = "ln"
    if batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["bf"], perm=[1, 0, 2]))
        x, axis = "bf", 1
    if pooled:  # the maximum over the steps (a max-pooling classifier) instead of the last
        nodes.append(helper.make_node("ReduceMax", [x], ["last"], axes=[axis], keepdims=0))
    elif sliced:
        nodes.append(helper.make_node("Slice", [x, const("start", [-1]), const("end", [T]),
                                                const("axis", [axis])], ["last"]))
    else:
        nodes.append(helper.make_node("Gather", [x, const("minus1", np.array(-1, np.int64))],
                                      ["last"], axis=axis))
    nodes.append(helper.make_node("MatMul", ["last", const("head", uniform(dirs * H, C))],
                                  ["logits"]))
    graph = helper.make_graph(
        nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, N, I])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("last", "logits")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _total(m: Moments, shape, part=slice(None)) -> float:
    """Variance over the samples and the features ``part`` of the last axis."""
    mean, var = (np.broadcast_to(a, shape)[..., part] for a in np.broadcast_arrays(m.mean, m.var))
    return float(var.mean() + mean.var())


def _check(model, rtol=0.06, head=True):
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    values = {k: v.astype(np.float64) for k, v in monte_carlo(model, moments, seed=1).items()}
    last, logits = values["last"], values["logits"]
    half = last.shape[-1] // 2
    for part in (slice(None, half), slice(half, None)):  # each direction's (or feature) half
        ratio = _total(result.moments["last"], last.shape, part) / last[..., part].var()
        assert abs(ratio - 1) < rtol, (part, ratio)
    if head:
        ratio = _total(result.moments["logits"], logits.shape) / logits.var()
        assert abs(ratio - 1) < rtol, ratio


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_bidirectional_stack_last_step(op):
    _check(_stack(op, "bidirectional"))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_reverse_stack_last_step_batch_first(op):
    _check(_stack(op, "reverse", batch_first=True))


def test_bidirectional_lstm_last_step_sliced():
    _check(_stack("LSTM", "bidirectional", sliced=True))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_max_over_the_steps(op):
    """The maximum over time of a recurrent layer's outputs (ReduceMax has no rule for
    statistics that vary along the reduced axis: measured by the fallback on samples correlated
    across the steps, per feature since the features axis is kept; before: pooled over the
    features, a full-size bidirectional LSTM's head after the max 1.87x, now 1.095x)."""
    _check(_stack(op, "forward", layers=2, pooled=True), rtol=0.1)


@pytest.mark.xfail(strict=True, reason="one correlation across steps for both directions' "
                   "features (the forward one's and the reverse one's differ: each is mirrored "
                   "in the other's): the maximum's halves 0.90x (LSTM), 1.18x (GRU)")
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_max_over_the_steps_bidirectional(op):
    _check(_stack(op, "bidirectional", layers=1, pooled=True), head=False)


def test_layer_norm_after_a_recurrent_layer():
    """The LayerNorm keeps the recurrent layer's per-step variances beside its correlation
    field (tokens._per_token_scale), so the Gather of one step reads that step's own (0.84x
    before, when the LayerNorm pooled the per-step profile into the field)."""
    _check(_stack("GRU", "reverse", layers=1, norm=True))


def test_bidirectional_gru_linear_before_reset_three_layers():
    _check(_stack("GRU", "bidirectional", layers=3, batch_first=True, linear_before_reset=1))


def _go_backwards(lengths: np.ndarray) -> onnx.ModelProto:
    """An LSTM's sequence reversed per sample (ReverseSequence, tf2onnx's Keras
    ``go_backwards``), read by a GRU, and a linear head on the GRU's last step."""
    rng = np.random.default_rng(2)

    def uniform(*shape):
        return numpy_helper.from_array((rng.uniform(-1, 1, shape) / np.sqrt(H)).astype(
            np.float32))

    inits = [uniform(1, 4 * H, I), uniform(1, 4 * H, H), uniform(1, 8 * H),
             uniform(1, 3 * H, H), uniform(1, 3 * H, H), uniform(1, 6 * H), uniform(H, C),
             numpy_helper.from_array(np.array([1], np.int64)),
             numpy_helper.from_array(np.array([0], np.int64)),
             numpy_helper.from_array(lengths.astype(np.int64))]
    names = ["w0", "r0", "b0", "w1", "r1", "b1", "head", "axis1", "axis0", "lens"]
    bias = numpy_helper.to_array(inits[2]).copy()
    bias[0, 2 * H:3 * H] = 2.0  # a forget bias (Keras': 1): a state correlated over many steps
    inits[2] = numpy_helper.from_array(bias)
    for init, name in zip(inits, names):
        init.name = name
    nodes = [helper.make_node("LSTM", ["x", "w0", "r0", "b0"], ["y0"], hidden_size=H),
             helper.make_node("Squeeze", ["y0", "axis1"], ["seq"]),
             helper.make_node("ReverseSequence", ["seq", "lens"], ["rev"], time_axis=0,
                              batch_axis=1),
             helper.make_node("GRU", ["rev", "w1", "r1", "b1"], ["y1", "h1"], hidden_size=H,
                              linear_before_reset=1),
             helper.make_node("Squeeze", ["h1", "axis0"], ["last"]),
             helper.make_node("MatMul", ["last", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "go_backwards", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, N, I])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("rev", "last", "logits")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_reverse_sequence_whole_feeds_the_next_layer():
    """Before: ReverseSequence had no rule (the empirical fallback, which drops the correlation
    across steps), and the GRU reading it was 0.48x of the measured on a Keras export."""
    _check(_go_backwards(np.full(N, T)))


def test_reverse_sequence_per_sample_lengths():
    """Shorter sequences reversed in their first ``len`` steps: each step's statistics."""
    lengths = np.where(np.arange(N) % 3 == 0, T, np.where(np.arange(N) % 3 == 1, 7, 3))
    model = _go_backwards(lengths)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    assert result.rules["rev"] == "reverse_sequence", result.fallbacks
    values = monte_carlo(model, moments, seed=1)
    assert_moments_close(result.moments["rev"], values["rev"], rtol=0.05, axis=0)
    _check(model)
