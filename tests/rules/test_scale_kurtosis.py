"""A gated MLP on a normalised row (Gemma 2's ``down(gelu(gate(h)) * up(h))`` after its
pre-feedforward RMSNorm), against onnxruntime: the mean square of the MLP output (its
post-feedforward norm's statistics). The product's elements are heavy-tailed (kurtosis about
6: a product of two projections), which a dense layer turns into energy excess of its outputs
as independent fourth cumulants; but the projections of a normalised row are platykurtic
(kurtosis ``3 e_s = -6 q / (1 + 2 q)``, a point on a sphere), which the pooled kurtosis left out
(pair_algebra.scale_kurtosis)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxinit.moments import Moments
from tests.oracle import monte_carlo, predict

N, T, D, F = 1024, 8, 64, 172


def _model(act: str, rank: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    # the normalised row: a projection of rank `rank` (a row of few effective features, the
    # concentration q of a sublayer's output), then RMSNorm written out
    mix = rng.standard_normal((rank, D)) / np.sqrt(rank)
    nodes = [
        helper.make_node("MatMul", ["x", "mix"], ["r"]),
        helper.make_node("Pow", ["r", "two"], ["r2"]),
        helper.make_node("ReduceMean", ["r2", "last"], ["ms0"], keepdims=1),
        helper.make_node("Add", ["ms0", "eps"], ["mse"]),
        helper.make_node("Sqrt", ["mse"], ["rms"]),
        helper.make_node("Div", ["r", "rms"], ["h"]),
        helper.make_node("MatMul", ["h", "w_g"], ["g"]),
        helper.make_node("MatMul", ["h", "w_u"], ["u"]),
    ]
    if act == "gelu":
        nodes += [helper.make_node("Div", ["g", "sqrt2"], ["gs"]),
                  helper.make_node("Erf", ["gs"], ["ge"]),
                  helper.make_node("Add", ["ge", "one"], ["g1"]),
                  helper.make_node("Mul", ["g", "g1"], ["gg"]),
                  helper.make_node("Mul", ["gg", "half"], ["a"])]
    else:
        nodes += [helper.make_node("Sigmoid", ["g"], ["gsig"]),
                  helper.make_node("Mul", ["g", "gsig"], ["a"])]
    nodes += [
        helper.make_node("Mul", ["a", "u"], ["m"]),
        helper.make_node("MatMul", ["m", "w_d"], ["y"]),
        helper.make_node("Pow", ["y", "two"], ["y2"]),
        helper.make_node("ReduceMean", ["y2", "last"], ["ms"], keepdims=1),
    ]
    weights = [f32("mix", mix), f32("w_g", 0.02 * rng.standard_normal((D, F))),
               f32("w_u", 0.02 * rng.standard_normal((D, F))),
               f32("w_d", 0.02 * rng.standard_normal((F, D)))]
    graph = helper.make_graph(
        nodes, "gated_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, T, rank])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "ms")],
        weights + [f32("two", 2.0), f32("eps", 1e-6), f32("sqrt2", np.sqrt(2.0)),
                   f32("one", 1.0), f32("half", 0.5),
                   numpy_helper.from_array(np.array([-1], np.int64), "last")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


@pytest.mark.parametrize("act, rank, tol", [("gelu", 64, 0.05), ("silu", 64, 0.05),
                                             ("gelu", 8, 0.10)])
def test_gated_mlp_on_a_normalised_row_mean_square(act, rank, tol):
    """The mean square's variance 1.096x, 1.090x, 1.283x before; 1.015x, 1.007x, 1.034x now
    (rank 16: 1.47x before, 1.25x now, left: the product's own kurtosis 6.5 predicted, 4.9
    measured, its operands sharing the sphere's scale)."""
    model = _model(act, rank)
    inputs = {"x": Moments.scalar(0.0, 1.0)}
    _, result = predict(model, inputs)
    values = {k: v.astype(np.float64) for k, v in monte_carlo(model, inputs).items()}
    y = result.moments["y"].total()[1] / float(np.var(values["y"]))
    assert abs(y - 1) < 0.06, y
    ms = result.moments["ms"].total()[1] / float(np.var(values["ms"]))
    assert abs(ms - 1) < tol, ms
