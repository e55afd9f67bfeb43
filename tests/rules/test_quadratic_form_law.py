"""The law of a sum of squares over a Conv map's correlated channels (rules/quadratic_form_law.py)
for the inverse square root a normalisation takes, against onnxruntime: a 3x3 Conv of one
channel into 16 (rank 9), then Keras' UnitNormalization over the channels as tf2onnx writes it
(``x * min(1 / sqrt(sum x^2), 1e12)``) or an RMS norm (``1 / sqrt(mean x^2 + eps)``). The
gamma matched to the sum's mean and variance (its shape 2.8 where the sum has 9 degrees of
freedom) has too heavy a left tail: ``Var 1/sqrt(Q)`` read 1.4x."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze

from ..models import make_model

N, C = 2048, 16


def _graph(form: str):
    rng = np.random.default_rng(1)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    consts = [f32("w", rng.uniform(-1, 1, (C, 1, 3, 3)) * np.sqrt(6 / (9 + 9 * C))),
              f32("big", 1e12), f32("eps", 1e-3),
              numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3]),
             helper.make_node("Mul", ["y", "y"], ["y2"])]
    if form == "keras":
        nodes += [helper.make_node("ReduceSum", ["y2", "axes"], ["q"], keepdims=1),
                  helper.make_node("Sqrt", ["q"], ["root"]),
                  helper.make_node("Reciprocal", ["root"], ["inv"]),
                  helper.make_node("Min", ["inv", "big"], ["scale"])]
    else:
        nodes += [helper.make_node("ReduceMean", ["y2"], ["q"], axes=[1], keepdims=1),
                  helper.make_node("Add", ["q", "eps"], ["qe"]),
                  helper.make_node("Sqrt", ["qe"], ["root"]),
                  helper.make_node("Reciprocal", ["root"], ["scale"])]
    nodes.append(helper.make_node("Mul", ["y", "scale"], ["out"]))
    model = make_model(nodes,
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, 1, 8, 8])],
                       [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                       consts, opset=17)
    model.ir_version = 10
    return model


@pytest.mark.parametrize("form", ["keras", "rms"])
def test_inverse_root_of_a_channel_square_sum(form):
    found = {t.name: t for t in analyze(_graph(form), batch_size=N, measure=True).tensors}
    for name in ("root", "scale"):
        t = found[name]
        assert t.var == pytest.approx(t.measured_var, rel=0.06), name
        assert t.mean == pytest.approx(t.measured_mean, rel=0.02), name
