"""Lowering: BatchNormalization with batch statistics, Dropout, opset upgrade, inlining."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.autodiff import GradientProgram, lower
from onnxinit.runtime import make_session

from .gradcheck import check_gradients, node, randn


def _bn_model(opset=18, training_outputs=True):
    outputs = ["y", "rm", "rv"] if training_outputs else ["y"]
    bn = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], outputs,
                          epsilon=1e-3, momentum=0.9, training_mode=int(training_outputs))
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("g", randn(3, seed=1)), ("b", randn(3, seed=2)),
        ("m", np.full(3, 5.0, np.float32)), ("v", np.full(3, 9.0, np.float32))]]
    graph = helper.make_graph(
        [bn], "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_batch_norm_uses_batch_statistics():
    x = (randn(5, 3, 4, 4) * 3 + 2).astype(np.float32)
    lowered = lower(_bn_model(), {"x": x.shape})
    assert "BatchNormalization" not in {n.op_type for n in lowered.graph.node}
    (y,) = make_session(lowered, device="cpu").run(["y"], {"x": x})
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    g, b = randn(3, seed=1).reshape(1, 3, 1, 1), randn(3, seed=2).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y, g * (x - mean) / np.sqrt(var + 1e-3) + b, rtol=1e-4, atol=1e-5)


def test_batch_norm_gradients_from_opset_9():
    x = randn(4, 3, 4, 4)
    grads = {}
    for dtype in ("float64", "float32"):
        program = GradientProgram(_bn_model(opset=9, training_outputs=False), {"x": x.shape},
                                  loss="mse", dtype=dtype, device="cpu")
        assert set(program.wrt) == {"g", "b"}  # running statistics are not parameters
        _, grads[dtype] = program.gradients({"x": x}, np.zeros(x.shape))
    for name in ("g", "b"):
        np.testing.assert_allclose(grads["float32"][name], grads["float64"][name], rtol=1e-4)


def test_batch_norm_gradient_against_finite_differences():
    bn = node("BatchNormalization", ["x", "g", "b", "m", "v"], epsilon=1e-3, training_mode=1)
    check_gradients([node("Constant", [], "m", value=numpy_helper.from_array(np.zeros(3,
                                                                                      np.float32))),
                     node("Constant", [], "v", value=numpy_helper.from_array(np.ones(3,
                                                                                     np.float32))),
                     bn], {"x": randn(3, 3, 2, 2), "g": randn(3, seed=1), "b": randn(3, seed=2)})


def _dropout_model():
    return onnx.helper.make_model(helper.make_graph(
        [node("Constant", [], "r", value=numpy_helper.from_array(np.array(0.5, np.float32))),
         node("Dropout", ["x", "r"]),
         node("Mul", ["y", "w"], "z")], "d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(randn(8), "w")]),
        opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_dropout_is_identity_by_default_and_a_fixed_mask_when_asked():
    x = randn(4, 8, low=0.1)
    identity = GradientProgram(_dropout_model(), {"x": x.shape}, loss="mse", device="cpu")
    _, grads = identity.gradients({"x": x}, np.zeros((4, 8)))
    np.testing.assert_allclose(grads["w"], (2 * x * x * randn(8)).sum(axis=0) / x.size,
                               rtol=1e-5)
    masked = GradientProgram(_dropout_model(), {"x": x.shape}, loss="mse", device="cpu",
                             dropout=True, seed=3)
    _, first = masked.gradients({"x": x}, np.zeros((4, 8)))
    _, second = masked.gradients({"x": x}, np.zeros((4, 8)))
    np.testing.assert_array_equal(first["w"], second["w"])
    assert not np.allclose(first["w"], grads["w"])


def test_inlining_keeps_ops_that_have_rules():
    model = helper.make_model(helper.make_graph(
        [node("Relu", ["x"], "r"), node("Softmax", ["r"], "s"), node("HardSwish", ["s"])], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]),
        opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    ops = [n.op_type for n in lower(model, {"x": (2, 3)}).graph.node]
    assert ops[:2] == ["Relu", "Softmax"] and "HardSwish" not in ops and "HardSigmoid" in ops


def test_range_of_a_shape_is_kept_and_folded_so_shapes_stay_static():
    """Range's schema body is a Loop: inlined, it would hide the sequence length from constant
    folding and leave the loss output's shape unknown (as in a position-embedding lookup)."""
    table = numpy_helper.from_array(randn(8, 4), "pos")
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
        helper.make_node("Range", ["zero", "length", "one"], ["positions"]),
        helper.make_node("Gather", ["pos", "positions"], ["y"]),
    ]
    constants = [numpy_helper.from_array(np.array(v, np.int64), n)
                 for n, v in (("zero", 0), ("one", 1))]
    model = helper.make_model(helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [table, *constants]), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert "Loop" not in [n.op_type for n in lower(model, {"x": (2, 5)}).graph.node]
    program = GradientProgram(model, {"x": (2, 5)}, loss="mse")
    _, grads = program.gradients({"x": randn(2, 5)}, np.zeros((5, 4), np.float32))
    expected = 2 * numpy_helper.to_array(table)[:5] / 20
    np.testing.assert_allclose(grads["pos"][:5], expected, rtol=1e-5)
    np.testing.assert_array_equal(grads["pos"][5:], 0)
