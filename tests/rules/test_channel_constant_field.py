"""An element-wise chain with a per-channel constant on a tensor with a channel covariance field
(rules/channel_covariance.py, hermite.at_axis).

DAC's encoder starts with a Conv of its one audio channel (every output channel a filter of the
same samples: a dense channel field) and then the snake activation ``x + sin^2(a_c x) / a_c``
with ``a_c`` one per channel (``[1, C, 1]``). Mehler's amplitudes of the chain were taken on
``[C, nodes]`` arrays that the constant broadcast to ``[1, C, nodes]``, and the field's product
stopped with "non-broadcastable output operand" (strict mode: an internal error; otherwise the
field was dropped). DAC's 1x1 Conv after it reads the field (``w^T S w``). Predictions against
onnxruntime runs of the graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

B, C, T = 64, 8, 256


def _model():
    """x [B, 1, T] -> h = conv7(x) [B, C, T] -> snake(h) = h + sin(a h)^2 / a -> y = conv1x1."""
    rng = np.random.default_rng(1)
    consts = {"w1": rng.normal(0.0, 1 / np.sqrt(7), size=(C, 1, 7)),
              "w2": rng.normal(0.0, 1 / np.sqrt(C), size=(C, C, 1)),
              "alpha": rng.uniform(0.5, 2.0, size=(1, C, 1)), "two": np.array(2.0),
              "eps": np.array(1e-9)}
    nodes = [  # as HF's DAC exports it
        helper.make_node("Conv", ["x", "w1"], ["c"], pads=[3, 3]),
        helper.make_node("Reshape", ["c", "rows"], ["h"]),
        helper.make_node("Add", ["alpha", "eps"], ["alpha_eps"]),
        helper.make_node("Reciprocal", ["alpha_eps"], ["inv"]),
        helper.make_node("Mul", ["alpha", "h"], ["ah"]),
        helper.make_node("Sin", ["ah"], ["s"]),
        helper.make_node("Pow", ["s", "two"], ["s2"]),
        helper.make_node("Mul", ["inv", "s2"], ["q"]),
        helper.make_node("Add", ["h", "q"], ["snake"]),
        helper.make_node("Reshape", ["snake", "rows"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),  # a 1x1 Conv reads the field
    ]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(np.array([B, C, -1], dtype=np.int64), "rows"))
    graph = helper.make_graph(
        nodes, "snake", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, 1, T])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("snake", "y")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_snake_with_a_constant_per_channel_keeps_the_channel_field():
    model = _model()
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)  # ValueError in strict mode before
    values = monte_carlo(model, inputs, seed=6)
    for name in ("snake", "y"):
        measured = values[name].astype(np.float64)[:, :, 8:-8]  # the padded edges aside
        mean, var = result.moments[name].expand_rank(3).total()
        assert var == pytest.approx(measured.var(), rel=0.1), name
