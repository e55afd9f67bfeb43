"""Resize and Upsample (nearest, linear) of a spatially correlated map (issue 10): a box
filter's output (the mean of a 3x3 window of white noise) resized, then globally pooled,
against onnxruntime Monte Carlo runs. Nearest upsampling makes neighbours identical copies
and linear interpolation averages correlated neighbours: the rule gives the output its
correlation (the pool read independent positions before: 0.03x the measured variance) and
the interpolation its variance from the neighbours' correlation (0.54x when measured on
independent samples). The correlation is kept to offset 6 (``correlation.MAX_OFFSET``): after a
3x upsampling of this map the pool reads 0.87-0.89x, the offsets 7-8 left out."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, per_channel, predict

C = 4


def _model(resize, constants, opset=18, size=16):
    nodes = [helper.make_node("Conv", ["x", "box"], ["xb"], group=C, pads=[1] * 4), resize,
             helper.make_node("GlobalAveragePool", ["y"], ["pooled"])]
    inits = [numpy_helper.from_array(np.full((C, 1, 3, 3), 1 / 3, np.float32), "box")]
    inits += [numpy_helper.from_array(v, k) for k, v in constants.items()]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2000, C, size, size])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "pooled")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _resize(inputs=("xb", "", "scales"), **attrs):
    return helper.make_node("Resize", list(inputs), ["y"], **attrs)


SCALES = {"scales": np.array([1, 1, 2, 2], np.float32)}
CASES = [
    ("nearest", _resize(mode="nearest"), SCALES, 18),
    ("nearest-floor", _resize(mode="nearest", coordinate_transformation_mode="asymmetric",
                              nearest_mode="floor"), SCALES, 18),
    ("nearest-sizes", _resize(("xb", "", "", "sizes"), mode="nearest"),
     {"sizes": np.array([2000, C, 24, 32], np.int64)}, 18),
    ("nearest-down", _resize(mode="nearest"), {"scales": np.array([1, 1, 0.5, 0.5], np.float32)},
     18),
    ("linear", _resize(mode="linear"), SCALES, 18),
    ("linear-align-corners", _resize(mode="linear", coordinate_transformation_mode="align_corners"),
     SCALES, 18),
    ("linear-pytorch", _resize(mode="linear",
                               coordinate_transformation_mode="pytorch_half_pixel"),
     {"scales": np.array([1, 1, 2, 1.5], np.float32)}, 18),
    ("upsample", helper.make_node("Upsample", ["xb", "scales"], ["y"], mode="nearest"), SCALES, 9),
    ("resize-10", helper.make_node("Resize", ["xb", "scales"], ["y"], mode="linear"), SCALES, 10),
]


@pytest.mark.parametrize(("name", "node", "constants", "opset"), CASES,
                         ids=[c[0] for c in CASES])
def test_resize_of_a_correlated_map(name, node, constants, opset):
    model = _model(node, constants, opset)
    moments = {"x": Moments(np.zeros(()), np.ones(()))}
    _, result = predict(model, moments)
    values = monte_carlo(model, moments)
    assert result.rules["y"] == "resize", result.fallbacks
    for tensor, rtol in (("y", 0.05), ("pooled", 0.1)):
        _, got = per_channel(values[tensor])
        _, var = result.moments[tensor].values_along(1, got.size)
        assert abs(var.sum() / got.sum() - 1) < rtol, (tensor, var / got)
