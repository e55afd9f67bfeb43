"""A pre-activation block right after a max pool (DenseNet's and ResNetV2's stems, as tf2onnx
writes Keras' BatchNormalization: one Mul): Conv -> ReLU -> MaxPool(3x3, stride 2) -> BatchNorm
(batch statistics) -> ReLU, against onnxruntime. The pool's output, a maximum of nine
correlated ReLUs, is right-skewed (about 0.4), and the ReLU after its BatchNorm keeps more of
the variance than a Gaussian's (0.87x on the old code, Keras DenseNet121's first
pre-activation ReLU as well): rules/max_cumulants.py gives the Edgeworth terms the maximum's
skewness and kurtosis."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def _stem(shape, scale_sign: float, seed: int = 0):
    """Conv(7x7, stride 2, pad 3) -> ReLU -> MaxPool(3x3, stride 2, pad 1) -> BatchNorm
    (training_mode, scale of sign ``scale_sign``) -> ReLU."""
    rng = np.random.default_rng(seed)
    c_in, c = shape[1], 8
    consts = {"w": rng.standard_normal((c, c_in, 7, 7)) / np.sqrt(c_in * 49),
              "g": scale_sign * rng.uniform(0.5, 1.5, c), "beta": rng.uniform(-0.2, 0.2, c),
              "rm": np.zeros(c), "rv": np.ones(c)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[3, 3, 3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["p", "g", "beta", "rm", "rv"],
                              ["n", "m_out", "v_out"], training_mode=1),
             helper.make_node("Relu", ["n"], ["y"])]
    return make_model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in consts.items()], opset=17)


@pytest.mark.parametrize("scale_sign", [1.0, -1.0])
def test_a_relu_after_the_batchnorm_of_a_max_pool_reads_the_maximum_skewness(scale_sign):
    # old code: 0.87x (positive scale) and 1.16x (negative: the mirrored maximum is skewed
    # the other way) of onnxruntime's variance; now within 3%
    model = _stem((256, 3, 64, 64), scale_sign)
    x = Moments.scalar(0.0, 1.0)
    _, result = predict(model, {"x": x})
    out = monte_carlo(model, {"x": x})
    p = out["p"].astype(np.float64)
    skew = (((p - p.mean(axis=(0, 2, 3), keepdims=True)) ** 3).mean(axis=(0, 2, 3))
            / p.var(axis=(0, 2, 3)) ** 1.5)
    assert np.all(skew > 0.2)  # the case this test is about
    measured = out["y"].astype(np.float64).var()
    np.testing.assert_allclose(result.moments["y"].total()[1], measured, rtol=0.03)
