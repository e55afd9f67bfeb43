"""Global response normalization (ConvNeXt V2's GRN) written out as ops: ``G = ReduceL2(x)``
over the map, ``N = G / (mean_c G + eps)``, ``y = x * N``. N grows with the energy of the very
values it scales: over a group of n positions ``sum x^2 = G^2``, so ``E[x^2 N^2]`` is
``E[G^4] / E[G^2]^2`` times the product of independent factors (about 1 + 2/n for a Gaussian
map). Taken as independent it read 0.52x on ConvNeXt V2's 2x2 stage; here 0.67x (2x2 map) and
0.89x (4x4) on Gaussians, 0.45x and 0.73x on GELU outputs; now 1.03x, 1.01x, 1.12x, 1.05x.
Against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments

from ..oracle import monte_carlo, predict

B, C = 512, 32


def _grn(side: int, gelu: bool) -> onnx.ModelProto:
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Gelu", ["x"], ["h"]) if gelu
             else helper.make_node("Identity", ["x"], ["h"]),
             helper.make_node("ReduceL2", ["h", "map_axes"], ["g"], keepdims=1),
             helper.make_node("ReduceMean", ["g", "last"], ["g_mean"], keepdims=1),
             helper.make_node("Add", ["g_mean", "eps"], ["g_mean_eps"]),
             helper.make_node("Div", ["g", "g_mean_eps"], ["n"]),
             helper.make_node("Mul", ["h", "n"], ["y"])]
    graph = helper.make_graph(
        nodes, "grn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, side, side, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, side, side, C])],
        [f32("eps", 1e-6), numpy_helper.from_array(np.array([1, 2], np.int64), "map_axes"),
         numpy_helper.from_array(np.array([-1], np.int64), "last")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)


# tolerance: on GELU outputs the mean E[x G] is Stein's lemma's (exact for a Gaussian), 1.03x on
# the 2x2 map, and a positive mean's square is most of the second moment: 1.12x there
@pytest.mark.parametrize("side, gelu, tolerance", [(2, False, 0.05), (4, False, 0.05),
                                                   (2, True, 0.15), (4, True, 0.1)])
def test_scaled_by_its_own_map_norm(side, gelu, tolerance):
    model = _grn(side, gelu)
    x = Moments(np.zeros((1, 1, 1, C)), np.linspace(0.5, 2.0, C).reshape(1, 1, 1, C))
    _, result = predict(model, {"x": x})
    values = monte_carlo(model, {"x": x})
    ratio = result.moments["y"].total()[1] / values["y"].astype(np.float64).var()
    assert abs(ratio - 1) < tolerance, ratio
