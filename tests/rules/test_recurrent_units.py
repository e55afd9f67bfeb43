"""The covariance between the units of a recurrent state (rules/recurrent_units.py), read by a
dense head, against onnxruntime on Gaussian inputs (the batch axis holds the samples).

Each unit of one sample reads the same input through its rows of W and R, so a head on the
state sums ``w^T S w``, not ``sum_j w_j^2 Var h_j``. With 16 units and a head of 6 outputs
(PyTorch's default initialization) each output's variance read 0.52-2.12x of the measured
before (the units taken as independent); each is checked within 12% here, one case per op
variant (LSTM on the last step and on ``Y_h``, GRU with and without ``linear_before_reset``,
RNN tanh and ReLU, two stacked GRUs read on every step, a bidirectional GRU read on every step:
its two directions read the same input at each step)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

T, N, I, H, C = 12, 4000, 8, 16, 6
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(op: str, direction: str = "forward", layers: int = 1, head: str = "last",
           **attrs) -> onnx.ModelProto:
    """``layers`` recurrent layers (uniform +-1/sqrt(H) weights) as PyTorch writes them
    (``Y [T, D, N, H]`` -> Transpose -> Reshape ``[T, N, D*H]``) and a MatMul head on the last
    step (``head`` "last"), on the last layer's ``Y_h`` ("h_n") or on every step ("every")."""
    rng = np.random.default_rng(0)
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
        weights = [const(f"w{k}", uniform(dirs, g * H, features)),
                   const(f"r{k}", uniform(dirs, g * H, H)), const(f"b{k}", uniform(dirs, 2 * g * H))]
        nodes.append(helper.make_node(op, [x] + weights, [f"y{k}", f"yh{k}"], hidden_size=H,
                                      direction=direction, **attrs))
        nodes.append(helper.make_node("Transpose", [f"y{k}"], [f"t{k}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"t{k}", const(f"s{k}", [T, N, dirs * H])],
                                      [f"seq{k}"]))
        x, features = f"seq{k}", dirs * H
    if head == "last":
        nodes.append(helper.make_node("Gather", [x, const("last", np.array(-1, np.int64))],
                                      ["read"], axis=0))
    elif head == "h_n":
        nodes.append(helper.make_node("Squeeze", [f"yh{layers - 1}", const("axis", [0])],
                                      ["read"]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["read"]))
    nodes.append(helper.make_node("MatMul", ["read", const("head", uniform(features, C))],
                                  ["logits"]))
    graph = helper.make_graph(
        nodes, "units", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, N, I])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _per_output(model: onnx.ModelProto) -> np.ndarray:
    """Predicted / measured variance of each output of the head."""
    x = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, x)
    measured = monte_carlo(model, x, seed=1)["logits"].astype(np.float64)
    m = result.moments["logits"]
    mean, var = (np.broadcast_to(a, measured.shape).reshape(-1, C) for a in (m.mean, m.var))
    measured = measured.reshape(-1, C)
    return (var.mean(axis=0) + mean.var(axis=0)) / measured.var(axis=0)


@pytest.mark.parametrize("case", [
    dict(op="LSTM"), dict(op="LSTM", head="h_n"), dict(op="GRU"),
    dict(op="GRU", linear_before_reset=1), dict(op="RNN"), dict(op="RNN", activations=["Relu"]),
    dict(op="GRU", layers=2, head="every"), dict(op="GRU", direction="bidirectional", head="every"),
], ids=["lstm", "lstm_h_n", "gru", "gru_lbr", "rnn", "rnn_relu", "gru_2_every_step",
        "bigru_every_step"])
def test_head_reads_the_covariance_between_units(case):
    ratios = _per_output(_model(**case))
    assert np.all(np.abs(ratios - 1) < 0.12), np.round(ratios, 3)


@pytest.mark.xfail(strict=True, reason="Y's field is pooled over the steps; at the last step "
                   "the forward direction is at its end, the reverse at its first step: "
                   "outputs 0.95-1.21x (0.81-1.43x with the directions independent)")
def test_bidirectional_head_on_the_last_step():
    ratios = _per_output(_model("LSTM", "bidirectional"))
    assert np.all(np.abs(ratios - 1) < 0.12), np.round(ratios, 3)
