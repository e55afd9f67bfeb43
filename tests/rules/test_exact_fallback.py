"""A node the empirical fallback runs whose signal inputs have no variance: every sample holds
the same values, so its output is known per element (HF xLSTM's mLSTM: the log forget gates,
constant at initialization (zero gate weights, a bias per head), summed by a CumSum over the
positions; the fallback pooled the positions' spread of the cumulative sums into a variance,
and the ReduceMax, Sub and Exp after it read a variance where onnxruntime measures none).
Checked against onnxruntime on the same graph: the values per element, variance 0."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, HEADS, STEPS = 4, 4, 16


def _model():
    graph = helper.make_graph(
        [helper.make_node("CumSum", ["g", "axis"], ["cumulative"]),
         helper.make_node("ReduceMax", ["cumulative"], ["peak"], axes=[2], keepdims=1),
         helper.make_node("Sub", ["cumulative", "peak"], ["shifted"]),
         helper.make_node("Exp", ["shifted"], ["decay"])],
        "exact_cumsum", [helper.make_tensor_value_info("g", TensorProto.FLOAT, [B, HEADS, STEPS])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("cumulative", "peak", "decay")],
        [numpy_helper.from_array(np.array(2, np.int64), "axis")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_a_cumsum_of_constant_gates_is_known_per_element():
    model = _model()
    log_gates = np.log(1 / (1 + np.exp(-np.array([3.0, 4.0, 5.0, 6.0])))).reshape(1, HEADS, 1)
    moments = {"g": Moments(log_gates, np.zeros((1, HEADS, 1)))}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    for name in ("cumulative", "peak"):  # the fallback's: per element
        m = result.moments[name]
        got = values[name].astype(np.float64)
        assert np.allclose(np.broadcast_to(m.mean, got.shape), got, rtol=1e-5, atol=1e-6), name
        assert not np.any(m.var), (name, np.max(m.var))
    got = values["decay"].astype(np.float64).var()  # the rules after: the spread pooled
    assert abs(result.moments["decay"].total()[1] / got - 1) < 0.01
