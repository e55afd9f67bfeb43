"""The squared length of a dense layer of unit rows (rules/scaled_row_square_sum.py), written as
tf2onnx writes Keras' UnitNormalization (``x * min(1 / sqrt(sum x^2), 1e12)``) and as
``x / sqrt(max(sum x^2, eps))``, against onnxruntime. A unit row's length is fixed, so the
squared length of its projection varies only with the row's direction: summed as independent
squares (the reduce rule before) it read 1.6-1.9x."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze

from ..models import make_model

N, D_IN, D, E = 8192, 64, 128, 64


def _graph(form: str, bias: bool):
    """x [N, 64] -> Dense 128 (Glorot uniform) -> ReLU -> unit rows (``form``) -> Dense 64
    (with a bias or not) -> the sum of its squares."""
    rng = np.random.default_rng(0)
    glorot = lambda a, b: rng.uniform(-1, 1, (a, b)) * np.sqrt(6 / (a + b))  # noqa: E731
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    consts = [f32("w1", glorot(D_IN, D)), f32("w2", glorot(D, E)),
              f32("b2", 0.1 * rng.standard_normal(E)), f32("big", 1e12), f32("eps", 1e-12),
              numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["z"]),
             helper.make_node("Relu", ["z"], ["r"]),
             helper.make_node("Mul", ["r", "r"], ["r2"]),
             helper.make_node("ReduceSum", ["r2", "axes"], ["s"], keepdims=1)]
    if form == "keras":
        nodes += [helper.make_node("Sqrt", ["s"], ["root"]),
                  helper.make_node("Reciprocal", ["root"], ["inv"]),
                  helper.make_node("Min", ["inv", "big"], ["scale"]),
                  helper.make_node("Mul", ["r", "scale"], ["u"])]
    else:
        nodes += [helper.make_node("Max", ["s", "eps"], ["floored"]),
                  helper.make_node("Sqrt", ["floored"], ["root"]),
                  helper.make_node("Div", ["r", "root"], ["u"])]
    nodes.append(helper.make_node("MatMul", ["u", "w2"], ["dense" if bias else "y"]))
    if bias:
        nodes.append(helper.make_node("Add", ["dense", "b2"], ["y"]))
    nodes += [helper.make_node("Mul", ["y", "y"], ["y2"]),
              helper.make_node("ReduceSum", ["y2", "axes"], ["q"], keepdims=1)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, D_IN])],
                       [helper.make_tensor_value_info("q", TensorProto.FLOAT, [N, 1])],
                       consts, opset=17)
    model.ir_version = 10
    return model


@pytest.mark.parametrize("form", ["keras", "div"])
@pytest.mark.parametrize("bias", [False, True])
def test_squared_length_of_a_dense_layer_of_unit_rows(form, bias):
    found = {t.name: t for t in analyze(_graph(form, bias), batch_size=N, measure=True).tensors}
    q = found["q"]
    assert q.var == pytest.approx(q.measured_var, rel=0.10)
    assert q.mean == pytest.approx(q.measured_mean, rel=0.02)
