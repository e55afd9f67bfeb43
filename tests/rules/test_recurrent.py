"""LSTM, GRU and RNN rules against onnxruntime runs of the same single node, one case per op
variant (outputs Y, Y_h, Y_c; directions; layouts; initial states; sequence_lens; activations
with alpha/beta; clip; peepholes; input_forget; linear_before_reset), in the manner of onnx's
backend node tests. The batch axis holds the Monte Carlo samples.

Weights are PyTorch's default initialization of nn.LSTM/GRU/RNN (every weight and bias
uniform in +-1/sqrt(hidden)), the state the analysis is for. onnxruntime runs only layout 0:
a batch-first case is measured on its layout-0 twin between two Transposes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxinit.moments import Moments
from onnxinit.rules.token_field import sigma
from tests.oracle import assert_moments_close, monte_carlo, node_model, predict

T, N, I, H = 12, 3000, 8, 16
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _weights(op: str, dirs: int, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    """uniform(-scale, scale) / sqrt(H): scale 1 is PyTorch's default initialization."""
    rng = np.random.default_rng(seed)
    g = GATES[op]

    def uniform(*shape):
        return (rng.uniform(-1, 1, shape) * scale / np.sqrt(H)).astype(np.float32)

    return {"W": uniform(dirs, g * H, I), "R": uniform(dirs, g * H, H),
            "B": uniform(dirs, 2 * g * H)}


def _case(op, dirs=1, layout=0, seed=0, extra=(), outputs=None, scale=1.0, **attrs):
    """A single-node model: x [T, N, I] (layout 0) or [N, T, I], weights, optional inputs."""
    consts = _weights(op, dirs, seed, scale)
    inputs = ["x", "W", "R", "B"]
    for name, value in extra:
        consts[name] = value
    names = {"sequence_lens": 4, "initial_h": 5, "initial_c": 6, "P": 7}
    for name, _ in sorted(extra, key=lambda e: names[e[0]]):
        while len(inputs) < names[name]:
            inputs.append("")
        inputs.append(name)
    outputs = outputs or (["y", "y_h", "y_c"] if op == "LSTM" else ["y", "y_h"])
    node = helper.make_node(op, inputs, outputs, hidden_size=H, layout=layout, **attrs)
    shape = (T, N, I) if layout == 0 else (N, T, I)
    return node_model(node, {"x": shape}, consts, opset=14), [o for o in outputs if o]


def _time_first(model: onnx.ModelProto) -> onnx.ModelProto:
    """The layout-1 model's layout-0 twin: X, initial states and outputs transposed around a
    layout-0 node (onnxruntime runs only layout 0)."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    graph = twin.graph
    node = graph.node[0]
    next(a for a in node.attribute if a.name == "layout").i = 0
    for init in graph.initializer:  # initial_h / initial_c: [N, dirs, H] -> [dirs, N, H]
        if init.name in ("initial_h", "initial_c"):
            value = numpy_helper.to_array(init).transpose(1, 0, 2)
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), init.name))
    pre = [helper.make_node("Transpose", ["x"], ["x_t"], perm=[1, 0, 2])]
    node.input[0] = "x_t"
    post = []
    for i, out in enumerate(node.output):
        if out:
            node.output[i] = out + "_t"
            perm = [2, 0, 1, 3] if i == 0 else [1, 0, 2]  # Y [T, D, N, H]; Y_h [D, N, H]
            post.append(helper.make_node("Transpose", [out + "_t"], [out], perm=perm))
    nodes = pre + [node] + post
    del graph.node[:]
    graph.node.extend(nodes)
    return twin


def _check(model, outs, x=Moments.scalar(0.0, 1.0), rtol=0.05):
    _, result = predict(model, {"x": x})
    layout = next((a.i for a in model.graph.node[0].attribute if a.name == "layout"), 0)
    values = monte_carlo(_time_first(model) if layout else model, {"x": x}, seed=3)
    op = model.graph.node[0].op_type.lower()
    for out in outs:
        assert result.rules[out] == op, (out, result.fallbacks)
        assert_moments_close(result.moments[out], values[out], rtol=rtol, atol=0.02)
    return result


def _states(dirs, layout, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    shape = (dirs, N, H) if layout == 0 else (N, dirs, H)
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_directions(direction):
    dirs = 2 if direction == "bidirectional" else 1
    _check(*_case("LSTM", dirs, direction=direction))


def test_lstm_batch_first_with_initial_states():
    extra = [("initial_h", _states(1, 1, 5)), ("initial_c", _states(1, 1, 6, 1.0))]
    _check(*_case("LSTM", layout=1, extra=extra))


def test_lstm_sequence_lens_bidirectional():
    lens = np.where(np.arange(N) % 3 == 0, T, np.where(np.arange(N) % 3 == 1, 7, 3))
    extra = [("sequence_lens", lens.astype(np.int32))]
    _check(*_case("LSTM", 2, direction="bidirectional", extra=extra))


def test_lstm_clip_and_input_forget():
    _check(*_case("LSTM", clip=1.5))
    _check(*_case("LSTM", seed=4, input_forget=1))


@pytest.mark.xfail(strict=True, reason="peepholes make the gates read the cell they multiply; "
                   "that correlation is not modelled: Y's variance 6.1% under")
def test_lstm_peepholes():
    peep = (np.random.default_rng(9).uniform(-1, 1, (1, 3 * H))).astype(np.float32)
    _check(*_case("LSTM", extra=[("P", peep)], clip=1.5))


def test_lstm_activations_with_alpha_beta():
    _check(*_case("LSTM", activations=["HardSigmoid", "Softsign", "ScaledTanh"],
                  activation_alpha=[0.25, 1.5], activation_beta=[0.5, 0.8]))


def test_lstm_y_h_only():
    _check(*_case("LSTM", outputs=["", "y_h"]))


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr):
    _check(*_case("GRU", linear_before_reset=lbr))


def test_gru_bidirectional_batch_first_initial_state():
    _check(*_case("GRU", 2, layout=1, direction="bidirectional",
                  extra=[("initial_h", _states(2, 1, 7))], linear_before_reset=1))


def test_gru_reverse_sequence_lens_activations_clip():
    lens = np.where(np.arange(N) % 2 == 0, T, 5).astype(np.int32)
    _check(*_case("GRU", direction="reverse", extra=[("sequence_lens", lens)],
                  activations=["Sigmoid", "Elu"], activation_alpha=[0.7], clip=2.0))


@pytest.mark.parametrize("activation", ["Tanh", "Relu", "LeakyRelu"])
def test_rnn_activations(activation):
    attrs = {"activation_alpha": [0.1]} if activation == "LeakyRelu" else {}
    _check(*_case("RNN", activations=[activation], **attrs))


def test_rnn_bidirectional_batch_first_initial_state():
    _check(*_case("RNN", 2, layout=1, direction="bidirectional",
                  extra=[("initial_h", _states(2, 1, 8))]))


def test_lstm_input_with_per_step_statistics():
    # a stacked layer's input: statistics vary with the step and the feature (a variance 5.05%
    # under while E[i g] was E[i] E[g]: the gates' correlation through the same inputs,
    # recurrence._joint, is what was missing)
    mean = np.linspace(-0.5, 0.5, T)[:, None, None] * np.linspace(1, 2, I)[None, None, :]
    var = np.linspace(0.2, 1.5, T)[:, None, None] * np.ones((1, 1, I))
    _check(*_case("LSTM"), x=Moments(mean, var))


def test_recurrent_output_carries_its_correlation_across_steps():
    model, outs = _case("GRU")
    _, result = predict(model, {"x": Moments.scalar(0.0, 1.0)})
    y = monte_carlo(model, {"x": Moments.scalar(0.0, 1.0)}, seed=3)["y"].astype(np.float64)
    tokens = result.moments["y"].tokens
    assert tokens is not None and tokens.axis == -4 and tokens.n == T
    centred = y - y.mean(axis=2, keepdims=True)  # [T, 1, N, H]
    measured = np.einsum("tdnh,sdnh->ts", centred, centred) / (N * H)
    # the field is the correlation, Y's moments keep the variance per step (token_field.sigma
    # puts them together: before, the pooled variance times a covariance of mean diagonal 1)
    predicted = sigma(result.moments["y"], y.shape, [0], T)
    np.testing.assert_allclose(predicted, measured, atol=0.05 * measured.max())
