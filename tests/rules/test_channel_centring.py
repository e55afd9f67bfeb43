"""A LayerNorm over the channels of a map as tf2onnx writes a channels-last Keras
LayerNormalization after its transpose optimiser: on the NCHW Conv output, ``ReduceMean(axes
[1], keepdims)`` of x, a Reshape of that mean to its own shape, ``d = x - mean`` and
``ReduceMean(axes [1])`` of ``d * d``. The 32 channels of a 3x3 Conv of 8 are correlated
(rank 72 of 8 x 9 taps, correlations ~1/sqrt(72)), so their squares move together: with the
centred channels taken as independent the variance statistic read 0.76x of onnxruntime's,
1.09-1.11x with their field. Left in that 10%: the Sub rule takes x and its mean as
independent (``Var d = Var x + Var m``, 1.07x; ``Var x - Var m`` on average over the
channels), squared in the statistic. A zero-padded Conv's border positions, whose channels
correlate differently, are not in the within-position field (0.50x -> 0.73x with pads 1).
Three weight draws, against onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.models import make_model
from tests.oracle import monte_carlo, predict


def test_variance_over_the_channels_of_a_conv_centred_on_their_mean():
    b, c_in, c_out, size = 256, 8, 32, 8
    for seed in range(3):
        rng = np.random.default_rng(seed)
        consts = {"w": (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)),
                  "shape": np.array([b, 1, size - 2, size - 2])}
        nodes = [helper.make_node("Conv", ["x", "w"], ["h"]),
                 helper.make_node("ReduceMean", ["h"], ["m"], axes=[1], keepdims=1),
                 helper.make_node("Reshape", ["m", "shape"], ["m2"]),
                 helper.make_node("Sub", ["h", "m2"], ["d"]),
                 helper.make_node("Mul", ["d", "d"], ["d2"]),
                 helper.make_node("ReduceMean", ["d2"], ["v"], axes=[1], keepdims=1)]
        model = make_model(
            nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c_in, size, size])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("m", "v")],
            [numpy_helper.from_array(v.astype(np.int64 if n == "shape" else np.float32), n)
             for n, v in consts.items()], opset=17)
        x = Moments.scalar(0.0, 1.0)
        _, result = predict(model, {"x": x})
        values = monte_carlo(model, {"x": x}, seed=seed)
        for name, tolerance in (("m", 0.1), ("v", 0.15)):
            ratio = result.moments[name].total()[1] / float(np.var(values[name].astype(np.float64)))
            assert abs(ratio - 1) < tolerance, (seed, name, ratio)
