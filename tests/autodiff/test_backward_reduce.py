"""Reductions: axes as input (opset 18) or attribute (older opsets, upgraded by lowering),
keepdims, negative axes, all axes, noop_with_empty_axes."""

import numpy as np
import pytest
from onnx import numpy_helper

from .gradcheck import check_gradients, node, randn


def _axes(values):
    return node("Constant", [], "axes", value=numpy_helper.from_array(np.array(values, np.int64)))


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",
                                     "ReduceSumSquare", "ReduceL2"])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([-1, 0], 0), ([2], 0)])
def test_reduce_with_axes(op_type, axes, keepdims):
    check_gradients([_axes(axes), node(op_type, ["a", "axes"], keepdims=keepdims)],
                    {"a": randn(2, 3, 4)})


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean"])
def test_reduce_all_axes(op_type):
    check_gradients([node(op_type, ["a"], "r", keepdims=0), node("Mul", ["r", "a"])],
                    {"a": randn(2, 3)})


def test_reduce_noop_with_empty_axes():
    check_gradients([node("ReduceSum", ["a"], noop_with_empty_axes=1)], {"a": randn(2, 3)})


def test_reduce_mean_axes_attribute_in_opset_13():
    check_gradients([node("ReduceMean", ["a"], axes=[-1], keepdims=1)], {"a": randn(2, 3, 4)},
                    opset=13)


def test_reduce_l2_of_a_zero_row_is_differentiated_as_torch_does():
    """F.normalize of a padded (all-zero) row: x / max(||x||, eps). The norm's gradient at
    a zero vector is 0 (as torch's), not X dY / Y = 0 / 0 = NaN, which made every gradient
    upstream of a Swin V2 attention NaN; the row's own gradient is dY / eps."""
    import onnx
    from onnx import TensorProto, helper

    from onnxinit.autodiff.program import GradientProgram

    x = np.random.default_rng(0).standard_normal((3, 4))
    x[1] = 0.0
    eps = 1e-3
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(
            np.array([1], np.int64))),
         helper.make_node("ReduceL2", ["a", "axes"], ["n"], keepdims=1),
         helper.make_node("Clip", ["n", "eps"], ["c"]),
         helper.make_node("Div", ["a", "c"], ["y"])],
        "normalize", [], [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [3, 4])],
        [numpy_helper.from_array(x, "a"), numpy_helper.from_array(np.array(eps), "eps")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.checker.check_model(model)
    program = GradientProgram(model, {}, loss="mse", dtype="float64")
    targets = np.ones((3, 4))
    _, grads = program.gradients({}, targets)
    g = grads["a"]
    assert np.all(np.isfinite(g))
    dy = 2.0 * (0.0 - targets[1]) / targets.size  # the zero row's output is 0
    np.testing.assert_allclose(g[1], dy / eps, rtol=1e-12)
