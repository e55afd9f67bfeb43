"""The covariance between the units of a recurrent Loop's state (tf2onnx writes Keras 3's LSTM,
GRU and SimpleRNN, and Keras 2's SimpleRNN, as Loops; the empirical fallback measures them).
The units of one sample read the same input through the same weights, so a dense layer on
them sums ``w^T S w``; with the units taken as independent the Dense after Keras 3's GRU and
SimpleRNN read 1.11-1.17x. The fallback now keeps the covariance it measured across a Loop
output's last axis (``rules/measured_units.py``; one step of a scan output takes that step's),
and a Loop reading another's states draws its input with their units correlated
(``rules/loop_inputs.py``). Checked against onnxruntime on the graphs as tf2onnx writes them:
a Loop over a few input features (strongly correlated units), its states stacked as a scan
output, the last step sliced and squeezed, a dense head; and a second Loop reading the first's
states step by step."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

T, B, H, OUT = 8, 2048, 16, 4


def _body(name: str, reads: str, w: str, r: str, b: str) -> helper.GraphProto:
    """``h = tanh(h R + x W + b)`` with ``x`` = ``reads`` (outer scope; a sequence ``[T, B,
    n]`` read at step ``i`` when it is a "seq"), ``h`` also stacked as a scan output."""
    nodes = []
    if reads.startswith("seq"):
        nodes.append(helper.make_node("Gather", [reads, "i"], [f"{name}_x"], axis=0))
        reads = f"{name}_x"
    nodes += [helper.make_node("MatMul", ["h_in", r], [f"{name}_hr"]),
              helper.make_node("MatMul", [reads, w], [f"{name}_xw"]),
              helper.make_node("Add", [f"{name}_hr", f"{name}_xw"], [f"{name}_s"]),
              helper.make_node("Add", [f"{name}_s", b], [f"{name}_pre"]),
              helper.make_node("Tanh", [f"{name}_pre"], ["h_out"]),
              helper.make_node("Identity", ["h_out"], ["scan"]),
              helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    state = helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [B, H])
    return helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), state],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [B, H]),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [B, H])])


def _model(stacked: bool, features: int):
    rng = np.random.default_rng(11)
    weights = {
        "w1": rng.standard_normal((features, H)) * 1.2 / np.sqrt(features),
        "r1": rng.standard_normal((H, H)) * 0.8 / np.sqrt(H),
        "b1": rng.uniform(-0.5, 0.5, H),
        "w2": rng.standard_normal((H, H)) * 1.5 / np.sqrt(H),
        "r2": rng.standard_normal((H, H)) * 0.8 / np.sqrt(H),
        "b2": rng.uniform(-0.5, 0.5, H),
        "head": rng.standard_normal((H, OUT)) / np.sqrt(H),
    }
    last = "seq2" if stacked else "seq1"
    nodes = [helper.make_node("Loop", ["trips", "cond", "h0"], ["h1", "seq1"],
                              body=_body("first", "x", "w1", "r1", "b1"))]
    if stacked:
        nodes.append(helper.make_node("Loop", ["trips", "cond", "h0"], ["h2", "seq2"],
                                      body=_body("second", "seq1", "w2", "r2", "b2")))
    nodes += [helper.make_node("Slice", [last, "last", "end", "zero"], ["final"]),
              helper.make_node("Squeeze", ["final", "zero"], ["state"]),
              helper.make_node("MatMul", ["state", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "loop_units", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, features])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("state", "logits")],
        [numpy_helper.from_array(np.array(T, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond"),
         numpy_helper.from_array(np.zeros((B, H), np.float32), "h0")]
        + [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
        + [numpy_helper.from_array(np.array(v, np.int64), n)
           for n, v in {"zero": [0], "last": [T - 1], "end": [T]}.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _check(stacked: bool, features: int, tolerance: float):
    model = _model(stacked, features)
    moments = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    measured = values["logits"].astype(np.float64).var(axis=0)
    predicted = np.broadcast_to(result.moments["logits"].var, (1, OUT)).reshape(-1)
    ratio = predicted / measured
    assert np.all(np.abs(ratio - 1) < tolerance), ratio
    state = result.moments["state"].total()[1] / values["state"].astype(np.float64).var()
    assert abs(state - 1) < 0.05, state


def test_a_dense_layer_on_a_loop_state_sums_its_units_covariance():
    """16 units driven by 4 features: on main the head's outputs read 0.64-1.15x (each unit
    independent), within 1% now."""
    _check(stacked=False, features=4, tolerance=0.05)


def test_a_loop_reading_another_draws_its_units_correlated():
    """The second of two stacked Loops (16 features): on main its head's outputs read
    0.80-1.58x, 0.94-1.05x now (its input's units drawn correlated, its steps and units as a
    Kronecker product: within 10%)."""
    _check(stacked=True, features=16, tolerance=0.10)
