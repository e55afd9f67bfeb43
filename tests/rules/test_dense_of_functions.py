"""A dense layer reading an element-wise function of a dense expansion, and a single-unit head
(rules/covariance_readers.feature_cross_term_factor), against onnxruntime: a Siamese pair
(Keras' ``siamese`` of the sweep), one tower ``relu(x U) V`` (16 -> 64 -> 32) on two inputs,
``|t(a) - t(b)|``, a Dense to one unit. The ReLU features span 16 dimensions of 64: each tower
output's variance is ``v_j^T S v_j``, not ``sum v_j^2 nu`` (0.7-1.4x per feature without the
field), and the one unit's variance is one quadratic form whose cross terms no other unit
averages out (0.88x and 1.36x on two weight draws)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit import analyze
from onnxinit.graph import load
from onnxinit.propagate import propagate
from onnxinit.runtime import make_session

from ..models import make_model

N, D_IN, HIDDEN, D_OUT = 16384, 16, 64, 32


def _siamese(seed: int):
    rng = np.random.default_rng(seed)
    glorot = lambda a, b: rng.uniform(-1, 1, (a, b)) * np.sqrt(6 / (a + b))  # noqa: E731
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    consts = [f32("u", glorot(D_IN, HIDDEN)), f32("v", glorot(HIDDEN, D_OUT)),
              f32("w", glorot(D_OUT, 1))]
    nodes = []
    for s in "ab":
        nodes += [helper.make_node("MatMul", [s, "u"], [s + "h"]),
                  helper.make_node("Relu", [s + "h"], [s + "r"]),
                  helper.make_node("MatMul", [s + "r", "v"], [s + "t"])]
    nodes += [helper.make_node("Sub", ["at", "bt"], ["d"]),
              helper.make_node("Abs", ["d"], ["m"]),
              helper.make_node("MatMul", ["m", "w"], ["y"])]
    model = make_model(
        nodes, [helper.make_tensor_value_info(s, TensorProto.FLOAT, [N, D_IN]) for s in "ab"],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("at", "y")],
        consts, opset=17)
    model.ir_version = 10
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_unit_head_of_a_siamese_pair(seed):
    y = next(t for t in analyze(_siamese(seed), batch_size=N, measure=True).tensors
             if t.name == "y")
    assert y.var == pytest.approx(y.measured_var, rel=0.08)


def test_per_feature_variance_after_a_relu_expansion():
    model = _siamese(1)
    rng = np.random.default_rng(5)
    feeds = {s: rng.standard_normal((N, D_IN)).astype(np.float32) for s in "ab"}
    measured = make_session(model, device="cpu").run(["at"], feeds)[0].astype(np.float64).var(0)
    predicted = np.ravel(propagate(load(model)).moments["at"].var)
    assert predicted.shape == measured.shape
    np.testing.assert_allclose(predicted, measured, rtol=0.08)
